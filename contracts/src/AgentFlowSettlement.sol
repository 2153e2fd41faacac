// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title AgentFlow Payments settlement contract
/// @notice Agents deposit ETH or ERC-20 tokens here for a beneficiary. The service's operator settles the
/// payments it accepted off chain in numbered batches: each item debits a depositor and pays the payee
/// directly. A batch number executes once, so a retried batch can never pay twice. Fees accrue per token
/// and go to four recipients. If the service stops serving them, depositors can exit on their own after
/// `exitDelay`.
contract AgentFlowSettlement is Ownable2Step, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice The "token" address that stands for native ETH.
    address public constant ETH = address(0);
    /// @notice Gas forwarded with an ETH payout: enough for a smart wallet's receive, bounded so that a
    /// payee cannot burn a batch's gas.
    uint256 public constant PAYOUT_GAS = 50_000;
    /// @notice Fee split in basis points; the platform takes the rest (4,000 and the rounding).
    uint256 private constant NETWORK_BPS = 3_000;
    uint256 private constant AGENT_BPS = 2_000;
    uint256 private constant STAKING_BPS = 1_000;

    /// @notice One payment: `amount` from `from`'s deposit to `to`, and `fee` from `from` to the fees.
    struct Item {
        address from;
        address to;
        uint256 amount;
        uint256 fee;
    }

    /// @notice The items of one token within a batch.
    struct TokenItems {
        address token;
        Item[] items;
    }

    /// @notice The account allowed to settle batches.
    address public operator;
    /// @notice Fee recipients: platform, network, agent, staking.
    address[4] private _feeRecipients;
    /// @notice Seconds between an exit request and the exit.
    uint256 public immutable exitDelay;
    /// @notice The id of the last batch executed; the next must be this plus one.
    uint256 public lastBatchId;
    /// @notice Fees settled and not paid out yet, per token.
    mapping(address token => uint256) public accruedFees;
    /// @notice When each account requested an exit (0: never).
    mapping(address account => uint256) public exitRequestedAt;

    mapping(address token => mapping(address account => uint256)) private _balances;

    event Deposited(address indexed token, address indexed beneficiary, address indexed sender, uint256 amount);
    event BatchSettled(uint256 indexed batchId, uint256 items, uint256 skipped);
    /// @notice A payee could not receive; the amount went to its balance here instead.
    event PayoutCredited(
        uint256 indexed batchId, uint256 index, address indexed token, address indexed payee, uint256 amount
    );
    /// @notice An item whose depositor no longer holds enough (it exited) was not executed.
    event ItemSkipped(uint256 indexed batchId, uint256 index, address indexed token, address indexed from);
    event FeesDistributed(address indexed token, uint256 amount);
    /// @notice A fee recipient could not receive; its part went to its balance here instead.
    event FeeCredited(address indexed token, address indexed recipient, uint256 amount);
    event ExitRequested(address indexed account, uint256 availableAt);
    event ExitCancelled(address indexed account);
    event Exited(address indexed account, address indexed token, uint256 amount);
    event OperatorChanged(address indexed previous, address indexed operator);
    event FeeRecipientsChanged(address platform, address network, address agent, address staking);

    error NotOperator(address caller);
    error UnexpectedBatchId(uint256 expected, uint256 given);
    error ZeroAddress();
    error ZeroAmount();
    error NotAToken();
    error ExitNotRequested();
    error ExitNotReady(uint256 availableAt);
    error EthTransferFailed(address to, uint256 amount);

    constructor(address owner_, address operator_, address[4] memory feeRecipients_, uint256 exitDelay_)
        Ownable(owner_)
    {
        _setOperator(operator_);
        _setFeeRecipients(feeRecipients_);
        exitDelay = exitDelay_;
    }

    /// @notice Plain ETH sent to the contract is a deposit for the sender.
    receive() external payable {
        _credit(ETH, msg.sender, msg.sender, msg.value);
    }

    // -- deposits ------------------------------------------------------------------------------------

    /// @notice Deposit the ETH sent for `beneficiary`.
    function depositETH(address beneficiary) external payable {
        _credit(ETH, beneficiary, msg.sender, msg.value);
    }

    /// @notice Deposit `amount` of `token` (approved beforehand) for `beneficiary`. What actually arrived is
    /// credited, so a token that takes a fee on transfer credits less.
    function depositToken(address token, address beneficiary, uint256 amount) external nonReentrant {
        if (token == ETH) revert NotAToken();
        if (amount == 0) revert ZeroAmount();
        uint256 before = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        _credit(token, beneficiary, msg.sender, IERC20(token).balanceOf(address(this)) - before);
    }

    /// @notice What `account` holds here in `token` (ETH: the zero address).
    function balanceOf(address token, address account) external view returns (uint256) {
        return _balances[token][account];
    }

    // -- settlement ----------------------------------------------------------------------------------

    /// @notice Execute batch `batchId`, which must be `lastBatchId + 1`. Items are numbered in order across
    /// the token groups. A payee that cannot receive is credited here (`PayoutCredited`); an item whose
    /// depositor no longer holds enough is skipped (`ItemSkipped`); neither reverts the batch.
    function settle(uint256 batchId, TokenItems[] calldata groups) external nonReentrant {
        if (msg.sender != operator) revert NotOperator(msg.sender);
        uint256 expected = lastBatchId + 1;
        if (batchId != expected) revert UnexpectedBatchId(expected, batchId);
        lastBatchId = batchId;
        uint256 index;
        uint256 skipped;
        for (uint256 g; g < groups.length; ++g) {
            address token = groups[g].token;
            Item[] calldata items = groups[g].items;
            mapping(address => uint256) storage balances = _balances[token];
            uint256 fees;
            for (uint256 i; i < items.length; ++i) {
                Item calldata item = items[i];
                uint256 debit = item.amount + item.fee;
                uint256 available = balances[item.from];
                if (available < debit) {
                    emit ItemSkipped(batchId, index, token, item.from);
                    ++skipped;
                } else {
                    unchecked {
                        balances[item.from] = available - debit;
                    }
                    fees += item.fee;
                    if (item.amount != 0 && !_send(token, item.to, item.amount)) {
                        balances[item.to] += item.amount;
                        emit PayoutCredited(batchId, index, token, item.to, item.amount);
                    }
                }
                ++index;
            }
            if (fees != 0) accruedFees[token] += fees;
        }
        emit BatchSettled(batchId, index, skipped);
    }

    /// @notice Pay the fees accrued in `token` to the four recipients (40/30/20/10; the platform takes the
    /// rounding). Anyone may call it: where the money goes is fixed by the owner.
    function distributeFees(address token) external nonReentrant {
        uint256 total = accruedFees[token];
        if (total == 0) return;
        accruedFees[token] = 0;
        uint256 network = (total * NETWORK_BPS) / 10_000;
        uint256 agent = (total * AGENT_BPS) / 10_000;
        uint256 staking = (total * STAKING_BPS) / 10_000;
        _payFee(token, _feeRecipients[1], network);
        _payFee(token, _feeRecipients[2], agent);
        _payFee(token, _feeRecipients[3], staking);
        _payFee(token, _feeRecipients[0], total - network - agent - staking);
        emit FeesDistributed(token, total);
    }

    // -- the escape hatch ----------------------------------------------------------------------------

    /// @notice Start the exit clock for the caller: after `exitDelay` it may take out what it holds here.
    /// The service keeps settling what it accepted meanwhile.
    function requestExit() external {
        exitRequestedAt[msg.sender] = block.timestamp;
        emit ExitRequested(msg.sender, block.timestamp + exitDelay);
    }

    /// @notice Withdraw the exit request.
    function cancelExit() external {
        if (exitRequestedAt[msg.sender] == 0) revert ExitNotRequested();
        exitRequestedAt[msg.sender] = 0;
        emit ExitCancelled(msg.sender);
    }

    /// @notice After the delay, take all the caller holds here in `token`.
    function exit(address token) external nonReentrant {
        uint256 requested = exitRequestedAt[msg.sender];
        if (requested == 0) revert ExitNotRequested();
        uint256 availableAt = requested + exitDelay;
        if (block.timestamp < availableAt) revert ExitNotReady(availableAt);
        uint256 amount = _balances[token][msg.sender];
        if (amount == 0) revert ZeroAmount();
        _balances[token][msg.sender] = 0;
        emit Exited(msg.sender, token, amount);
        if (token == ETH) {
            (bool ok,) = msg.sender.call{value: amount}("");
            if (!ok) revert EthTransferFailed(msg.sender, amount);
        } else {
            IERC20(token).safeTransfer(msg.sender, amount);
        }
    }

    // -- administration ------------------------------------------------------------------------------

    /// @notice Fee recipients: platform, network, agent, staking.
    function feeRecipients() external view returns (address[4] memory) {
        return _feeRecipients;
    }

    function setOperator(address operator_) external onlyOwner {
        _setOperator(operator_);
    }

    function setFeeRecipients(address[4] calldata recipients) external onlyOwner {
        _setFeeRecipients(recipients);
    }

    // -- internals -----------------------------------------------------------------------------------

    function _credit(address token, address beneficiary, address sender, uint256 amount) private {
        if (beneficiary == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        _balances[token][beneficiary] += amount;
        emit Deposited(token, beneficiary, sender, amount);
    }

    /// @dev Pay out without reverting: false when the recipient (or the token) refused.
    function _send(address token, address to, uint256 amount) private returns (bool ok) {
        if (token == ETH) {
            // No return data is copied: a payee cannot make the batch pay for a large one.
            assembly ("memory-safe") {
                ok := call(PAYOUT_GAS, to, amount, 0, 0, 0, 0)
            }
        } else {
            ok = IERC20(token).trySafeTransfer(to, amount);
        }
    }

    function _payFee(address token, address recipient, uint256 amount) private {
        if (amount == 0 || _send(token, recipient, amount)) return;
        _balances[token][recipient] += amount;
        emit FeeCredited(token, recipient, amount);
    }

    function _setOperator(address operator_) private {
        if (operator_ == address(0)) revert ZeroAddress();
        emit OperatorChanged(operator, operator_);
        operator = operator_;
    }

    function _setFeeRecipients(address[4] memory recipients) private {
        for (uint256 i; i < 4; ++i) {
            if (recipients[i] == address(0)) revert ZeroAddress();
        }
        _feeRecipients = recipients;
        emit FeeRecipientsChanged(recipients[0], recipients[1], recipients[2], recipients[3]);
    }
}
