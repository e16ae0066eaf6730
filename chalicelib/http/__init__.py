"""The HTTP edge: authorization and the OpenAPI document."""
