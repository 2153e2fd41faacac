// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title The benchmark's yardstick: a plain batch of ERC-20 transfers from the caller, nothing else.
contract BatchTransfer {
    function transferMany(IERC20 token, address[] calldata to, uint256[] calldata amounts) external {
        for (uint256 i; i < to.length; ++i) {
            require(token.transferFrom(msg.sender, to[i], amounts[i]), "transfer");
        }
    }
}
