-- Runs once when the regression database is created.
CREATE EXTENSION nile_tenancy;
