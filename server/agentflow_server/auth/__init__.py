"""Who is calling: API keys, their scopes and addresses, and their rate limits."""

from .keys import ApiKeyRegistry, NewApiKey, hash_key
from .principal import Principal, Scope, current_principal
from .rate_limit import RateLimiter

__all__ = [
    "ApiKeyRegistry",
    "NewApiKey",
    "Principal",
    "RateLimiter",
    "Scope",
    "current_principal",
    "hash_key",
]
