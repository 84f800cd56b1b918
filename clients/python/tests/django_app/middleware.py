"""Middleware below TenantMiddleware. FailAfterViewMiddleware fails after the view ran (header X-Fail-After-View): an
exception Django turns into a 500 without calling process_exception, which must still roll the request back.
AnswerViewErrorsMiddleware answers the view's exception itself with a 500 (header X-Answer-View-Errors), as error
reporting middleware and frameworks do, so TenantMiddleware's process_exception is never called."""

from __future__ import annotations

from typing import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse


class FailAfterViewMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "X-Fail-After-View" in request.headers:
            raise RuntimeError("a middleware failed after the view")
        return response


class AnswerViewErrorsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if "X-Answer-View-Errors" in request.headers:
            return JsonResponse({"error": str(exception)}, status=500)
        return None
