"""URLs of the Django tests."""

from django.urls import path

from . import views

urlpatterns = [
    path("projects", views.projects),
    path("context", views.context),
    path("write-then-fail", views.write_then_fail),
]
