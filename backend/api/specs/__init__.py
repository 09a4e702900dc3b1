"""The API description, one small module per blueprint module (backend/api/openapi.py joins them).

Each module here has `OPERATIONS`: {(METHOD, flask rule): Operation}. A new route is
described by one entry in the module of its blueprint (or a new module here: every module
of this package is read); query parameters come from the route's own `@accepts(...)`, path
parameters from its rule, and the usual errors are added from its scope. A registered route
without an entry fails tests/api/test_openapi.py.
"""
