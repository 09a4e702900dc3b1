"""Input formats. Importing the package registers every format module in it."""

from backend.ingest.parsing import (  # noqa: F401  (imported for their register() side effect)
    json_format,
    line_protocol,
    raw,
    teltonika,
    thingsboard,
)
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
