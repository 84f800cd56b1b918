"""Views of the Django tests: each runs in the request's tenant context (TenantMiddleware)."""

from __future__ import annotations

from django.db import connection
from django.http import Http404, HttpRequest, JsonResponse

from nile_tenancy.django import current_tenant_id

from .models import Project, Task


def projects(request: HttpRequest) -> JsonResponse:
    """GET: the tenant's projects and tasks; POST: a project with one task, as Django writes them."""
    if request.method == "POST":
        project = Project.objects.create(name=request.POST["name"])
        Task.objects.create(project=project, title=f"{project.name} task")
    names = sorted(Project.objects.values_list("name", flat=True))
    tenants = sorted({str(t) for t in Project.objects.values_list("tenant_id", flat=True)})
    titles = sorted(Task.objects.select_related("project").values_list("title", flat=True))
    return JsonResponse({"projects": names, "tenants": tenants, "tasks": titles})


def context(request: HttpRequest) -> JsonResponse:
    """The context as the server and the package see it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT nile.current_tenant()::text")
        (server,) = cursor.fetchone()
    return JsonResponse({"server": server, "package": str(current_tenant_id())})


def write_then_fail(request: HttpRequest) -> JsonResponse:
    """Writes a project, then fails: with RuntimeError (500), Http404 (404), or by answering 503 itself."""
    Project.objects.create(name=request.POST["name"])
    if request.POST.get("how") == "404":
        raise Http404("not here")
    if request.POST.get("how") == "503":
        return JsonResponse({"error": "try again later"}, status=503)
    raise RuntimeError("the view failed after writing")
