"""backend/api/metrics_routes.py and backend/api/openapi.py."""

from backend.api.specs.common import OBJ, Operation

OPERATIONS = {
    ("GET", "/metrics"): Operation(
        "Prometheus metrics of the whole instance", {200: {"type": "string"}},
        "Text exposition format, every gunicorn worker added up. A key with `read` scope, or an"
        " address in METRICS_ALLOW.", tag="operations", content_type="text/plain", errors=(401, 403)),
    ("GET", "/openapi.json"): Operation("This description (OpenAPI 3.1)", {200: OBJ}, tag="operations"),
    ("GET", "/docs"): Operation("The API reference page", {200: {"type": "string"}}, tag="operations",
                                content_type="text/html"),
    ("GET", "/docs/swagger-ui-bundle.js"): Operation("The reference page's script (Swagger UI)",
                                                     {200: {"type": "string"}}, tag="operations",
                                                     content_type="text/javascript"),
    ("GET", "/docs/swagger-ui.css"): Operation("The reference page's style sheet", {200: {"type": "string"}},
                                               tag="operations", content_type="text/css"),
}
