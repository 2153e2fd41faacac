// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title A payee that refuses ETH, or burns all the gas it is given: the recipient that must not make a
/// settlement batch revert.
contract RejectingPayee {
    bool public immutable burnGas;

    constructor(bool burnGas_) {
        burnGas = burnGas_;
    }

    receive() external payable {
        if (burnGas) {
            while (true) {}
        }
        revert("no thanks");
    }
}
