"""backend/dashboard/views.py: the dashboard page, its static files and the plotly.js bundle."""

from backend.api.specs.common import STR, Operation

_TYPES = {"js": "text/javascript", "css": "text/css"}
FILES = ("app.js", "api.js", "chart.js", "live.js", "views.js", "dashboard.css")

OPERATIONS = {
    ("GET", "/"): Operation("The dashboard page", {200: STR}, tag="dashboard", content_type="text/html"),
    **{("GET", f"/dashboard/static/{name}"): Operation(f"The dashboard's {name}", {200: STR}, tag="dashboard",
                                                      content_type=_TYPES[name.rsplit(".", 1)[1]], errors=(404,))
       for name in FILES},
    ("GET", "/dashboard/vendor/plotly.min.js"): Operation(
        "plotly.js, from the installed plotly package", {200: STR},
        "503 when the plotly package is not installed.", tag="dashboard", content_type="text/javascript"),
}
