"""The event log as streams: filters, and the hub that follows the log live."""

from .filter import EVENT_TYPES, EventFilter, check_type_pattern
from .hub import EventHub, Subscription

__all__ = ["EVENT_TYPES", "EventFilter", "EventHub", "Subscription", "check_type_pattern"]
