"""Alerts: rules and their state machine (rules.py), their SQL (store.py), the engine that
evaluates committed readings (engine.py), silence checks (silence.py) and webhooks (webhooks.py)."""

from .engine import AlertEngine
from .rules import FLUXIO_RULE_TYPES, RULE_TYPES, SEVERITIES, Rule, RuleError, RuleSet, State, parse_rule, step
from .store import create_rule, delete_rule, list_alerts, list_rules, set_resolved
from .webhooks import WebhookSender, url_refusal

__all__ = ["FLUXIO_RULE_TYPES", "RULE_TYPES", "SEVERITIES", "AlertEngine", "Rule", "RuleError", "RuleSet", "State",
           "WebhookSender", "create_rule", "delete_rule", "list_alerts", "list_rules", "parse_rule",
           "set_resolved", "step", "url_refusal"]
