// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {TestToken} from "./TestToken.sol";

/// @title A test token whose transfers cost `extraGas` more than usual (a token with costly hooks), so that
/// tests can make a batch outgrow the gas the service budgets per item.
contract CostlyToken is TestToken {
    uint256 public immutable extraGas;

    constructor(uint256 extraGas_) TestToken("Costly USD (test)", "CUSD", 6) {
        extraGas = extraGas_;
    }

    function _update(address from, address to, uint256 value) internal override {
        uint256 start = gasleft();
        while (start - gasleft() < extraGas) {}
        super._update(from, to, value);
    }
}
