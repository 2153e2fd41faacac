"""The chain side: the settlement contract's artifacts, and (as they land) deposits, settlement and the
relayer."""
