"""A middleware below TenantMiddleware that fails after the view ran (header X-Fail-After-View): an exception Django
turns into a 500 without calling process_exception, which must still roll the request back."""

from __future__ import annotations

from typing import Callable

from django.http import HttpRequest, HttpResponse


class FailAfterViewMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "X-Fail-After-View" in request.headers:
            raise RuntimeError("a middleware failed after the view")
        return response
