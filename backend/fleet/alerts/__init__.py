"""Alerts: rules and their state machine (rules.py), their SQL (store.py), the engine that
evaluates committed readings (engine.py), silence checks (silence.py) and webhooks (webhooks.py)."""

from backend.fleet.alerts.engine import AlertEngine
from backend.fleet.alerts.rules import (
           FLUXIO_RULE_TYPES,
           RULE_TYPES,
           SEVERITIES,
           Rule,
           RuleError,
           RuleSet,
           State,
           parse_rule,
           step,
)
from backend.fleet.alerts.store import create_rule, delete_rule, list_alerts, list_rules, set_resolved
from backend.fleet.alerts.webhooks import WebhookSender, url_refusal

__all__ = ["FLUXIO_RULE_TYPES", "RULE_TYPES", "SEVERITIES", "AlertEngine", "Rule", "RuleError", "RuleSet", "State",
           "WebhookSender", "create_rule", "delete_rule", "list_alerts", "list_rules", "parse_rule",
           "set_resolved", "step", "url_refusal"]
