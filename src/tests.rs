//! tests — in-server unit tests (`cargo pgrx test`): each runs inside one transaction of one session.
use pgrx::prelude::*;

#[pg_test]
fn placeholder() {}
