"""Webhooks: endpoints (``model``), the dispatcher that fans the event log out to them and delivers
(``dispatcher.WebhookDispatcher``), one signed HTTP attempt (``sender``), the retry schedule (``retry``), and
which URLs and secrets are acceptable (``urls``, ``secrets``)."""
