"""Two tenant tables: the tenant column is the database's (db_default=CurrentTenant()), never sent by Django."""

from __future__ import annotations

import uuid

from django.db import models

from nile_tenancy.django import CurrentTenant


class Project(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant_id = models.UUIDField(db_default=CurrentTenant(), editable=False)
    name = models.TextField()


class Task(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant_id = models.UUIDField(db_default=CurrentTenant(), editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    title = models.TextField()
    done = models.BooleanField(default=False)

    class Meta:
        indexes = [models.Index(fields=["tenant_id", "done"], name="sdk_task_tenant_done_idx")]
