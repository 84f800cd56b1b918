//! ddl — the DDL event triggers that keep tenant tables protected as the schema changes.
//!
//! - `events`: `nile_ddl_command_end` and `nile_sql_drop` (enrolment of new tables, new partitions and children
//!   protected, drift refused, dropped tables forgotten, generated objects kept)
//! - `prefilter`: their first look at a command, without SPI, so that DDL on unrelated tables costs next to nothing
//!
//! No `init()`: the triggers are SQL objects (sql/ddl_triggers.sql) calling the C functions of `events`.

pub mod events;
mod prefilter;
