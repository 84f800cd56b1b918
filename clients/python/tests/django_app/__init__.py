"""The Django project of test_django.py: its settings, one app (models with the tenant column's database default,
their migrations, views, URLs) and TenantMiddleware in MIDDLEWARE."""
