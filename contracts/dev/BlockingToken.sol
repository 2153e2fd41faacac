// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {TestToken} from "./TestToken.sol";

/// @title A test token with a block list like USDC's, so that tests can make a payee that cannot receive.
/// Kept apart from TestToken so that the block list's storage reads do not weigh on gas measurements.
contract BlockingToken is TestToken {
    mapping(address account => bool) public blocked;

    error Blocked(address account);

    constructor() TestToken("Blocking USD (test)", "BUSD", 6) {}

    function setBlocked(address account, bool value) external onlyOwner {
        blocked[account] = value;
    }

    function _update(address from, address to, uint256 value) internal override {
        if (blocked[from]) revert Blocked(from);
        if (blocked[to]) revert Blocked(to);
        super._update(from, to, value);
    }
}
