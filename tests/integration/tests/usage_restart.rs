//! Usage metering across server restarts and at capacity, on a cluster of its own (the tests restart it and kill it):
//! tenants beyond `nile.max_tracked_tenants` go to the overflow row and the totals stay exact; a clean restart keeps
//! every counter; after the postmaster is killed the counters start again from zero.

use nile_tenancy_integration::*;
use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::process::Command;

/// A throwaway cluster of this test, started with scripts/cluster.sh (so as `postgres` when run as root) and
/// stopped when dropped.
struct OwnCluster {
    dir: PathBuf,
    port: u16,
}

fn cluster_script() -> String {
    format!("{}/../../scripts/cluster.sh", env!("CARGO_MANIFEST_DIR"))
}

fn pg_config() -> String {
    let bindir = std::env::var("NILE_TEST_BINDIR")
        .expect("NILE_TEST_BINDIR is not set: run the integration tests through scripts/test.sh (make test)");
    format!("{bindir}/pg_config")
}

impl OwnCluster {
    fn start(name: &str, settings: &str) -> OwnCluster {
        let dir = std::env::temp_dir().join(format!("nile_it_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cluster = OwnCluster { dir, port: 0 };
        cluster.port = cluster.run_start();
        // Settings that need a restart go into the configuration file.
        let conf = cluster.dir.join("data/postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(settings);
        std::fs::write(&conf, text).unwrap();
        cluster.restart();
        cluster
    }

    fn run_start(&self) -> u16 {
        let out = Command::new(cluster_script())
            .args(["start", &pg_config(), self.dir.to_str().unwrap(), "nile"])
            .output()
            .expect("run scripts/cluster.sh");
        assert!(
            out.status.success(),
            "cluster start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a port")
    }

    fn stop(&self) {
        let _ = Command::new(cluster_script())
            .args(["stop", self.dir.to_str().unwrap()])
            .output();
    }

    /// A clean shutdown (fast mode) and a start.
    fn restart(&mut self) {
        self.stop();
        self.port = self.run_start();
    }

    /// SIGKILL to the postmaster, then a start (crash recovery).
    fn kill_and_start(&mut self) {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap();
        let pid = pid_file.lines().next().unwrap().trim().to_string();
        // The shell's own kill: no procps needed on a fresh machine.
        assert!(Command::new("sh")
            .args(["-c", &format!("kill -9 {pid}")])
            .status()
            .unwrap()
            .success());
        // The backends leave when they notice their postmaster is gone; until then the old shared memory is in use.
        std::thread::sleep(std::time::Duration::from_secs(2));
        self.port = self.run_start();
    }

    fn connect(&self) -> Client {
        Client::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=nile",
                self.port
            ),
            NoTls,
        )
        .unwrap()
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tenant(n: usize) -> String {
    format!("{:08x}-0000-7000-8000-{:012x}", 0x6000_0000 + n, n)
}

/// Statements per row kind: "tenant rows / tenant statements / overflow statements".
fn figures(c: &mut Client) -> String {
    one::<String>(
        c,
        "SELECT concat_ws(' / ', count(*) FILTER (WHERE kind = 'tenant'),
                                 coalesce(sum(statements) FILTER (WHERE kind = 'tenant'), 0),
                                 coalesce(sum(statements) FILTER (WHERE kind = 'overflow'), 0))
         FROM nile.tenant_usage",
    )
}

#[test]
fn capacity_overflow_clean_restart_and_crash() {
    let mut cluster = OwnCluster::start("usage_restart", "nile.max_tracked_tenants = 16\n");
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE EXTENSION nile_tenancy;
         CREATE TABLE notes (tenant_id uuid NOT NULL, body text);
         SELECT nile.enable_tenancy('notes');",
    )
    .unwrap();
    for n in 0..20 {
        c.execute(
            "SELECT nile.create_tenant($1, $2::text::uuid)",
            &[&format!("t{n}"), &tenant(n)],
        )
        .unwrap();
    }
    c.batch_execute("SELECT nile.reset_usage()").unwrap();
    // Two statements for each of 20 tenants: 16 get rows of their own, the last 4 go to the overflow row.
    for n in 0..20 {
        c.batch_execute(&format!(
            "BEGIN; SELECT nile.set_tenant('{}'); SELECT count(*) FROM notes; INSERT INTO notes (body) VALUES ('x'); COMMIT;",
            tenant(n)
        ))
        .unwrap();
    }
    assert_eq!(
        figures(&mut c),
        "16 / 32 / 8",
        "16 tenant rows, 8 statements of 4 tenants in overflow"
    );
    let inserted: i64 = one(
        &mut c,
        "SELECT sum(rows_inserted)::bigint FROM nile.tenant_usage",
    );
    assert_eq!(inserted, 20, "the sum over all rows is the true total");
    // Freeing a row lets a new tenant have one.
    c.execute("SELECT nile.reset_usage($1::text::uuid)", &[&tenant(0)])
        .unwrap();
    c.batch_execute(&format!(
        "BEGIN; SELECT nile.set_tenant('{}'); SELECT 1 FROM notes; COMMIT;",
        tenant(0)
    ))
    .unwrap();
    assert_eq!(figures(&mut c), "16 / 31 / 8");
    let before = one::<String>(
        &mut c,
        "SELECT string_agg(concat_ws(':', tenant_id, statements, rows_inserted, round(total_time_ms::numeric, 6)),
                           ',' ORDER BY tenant_id) FROM nile.tenant_usage WHERE kind IN ('tenant', 'overflow')",
    );

    // A clean restart keeps every counter.
    drop(c);
    cluster.restart();
    let mut c = cluster.connect();
    let after = one::<String>(
        &mut c,
        "SELECT string_agg(concat_ws(':', tenant_id, statements, rows_inserted, round(total_time_ms::numeric, 6)),
                           ',' ORDER BY tenant_id) FROM nile.tenant_usage WHERE kind IN ('tenant', 'overflow')",
    );
    assert_eq!(after, before);

    // After the postmaster is killed, the live counters start again from zero (nothing was saved).
    drop(c);
    cluster.kill_and_start();
    let mut c = cluster.connect();
    assert_eq!(figures(&mut c), "0 / 0 / 0");
}
