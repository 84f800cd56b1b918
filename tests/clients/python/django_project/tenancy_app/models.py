import uuid

from django.db import models

from .tenant import current_tenant_id


class Project(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant_id = models.UUIDField(default=current_tenant_id, editable=False)
    name = models.TextField()


class Task(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant_id = models.UUIDField(default=current_tenant_id, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    title = models.TextField()
    done = models.BooleanField(default=False)

    class Meta:
        indexes = [models.Index(fields=["tenant_id", "done"], name="task_tenant_done_idx")]
