"""Input formats. Importing the package registers every format module in it."""

from backend.ingest.parsing import json_format, line_protocol, raw  # noqa: F401  (imported for their register() side effect)
from backend.ingest.parsing import json_format, raw, teltonika, thingsboard  # noqa: F401  (imported for their register() side effect)
from backend.ingest.parsing.base import (
    PARSER_VERSION,
    ParseContext,
    ParseError,
    Parser,
    ParseResult,
    Reading,
    get_parser,
    parser_for_content_type,
    parser_names,
)

__all__ = [
    "PARSER_VERSION",
    "ParseContext",
    "ParseError",
    "ParseResult",
    "Parser",
    "Reading",
    "get_parser",
    "parser_for_content_type",
    "parser_names",
]
