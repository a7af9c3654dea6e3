//! One database server of either engine, as the tests use it, and the shop
//! data they back up: its schema, its rows and a fingerprint to compare a
//! restore with its source. The engines' differences live here, once.

use super::mariadb::MariaDb;
use super::minio::random_token;
use super::postgres::Postgres;
use super::process::run_ok;
use super::steps::Source;
use dbbackup_operator::api::Engine;

/// A database server of either engine.
pub enum Database {
    Maria(MariaDb),
    Pg(Postgres),
}

impl Database {
    /// An empty server on loopback.
    pub fn start(engine: Engine) -> Database {
        Self::start_on(engine, "127.0.0.1")
    }

    /// An empty server on `host` (the node's address, for pods).
    pub fn start_on(engine: Engine, host: &str) -> Database {
        match engine {
            Engine::Postgres => Database::Pg(Postgres::start_on(host)),
            Engine::Mariadb | Engine::Mysql => Database::Maria(MariaDb::start_on(host)),
        }
    }

    /// A server on loopback with the shop data in database "shop".
    pub fn with_shop(engine: Engine) -> Database {
        Self::with_shop_on(engine, "127.0.0.1")
    }

    /// A server on `host` with the shop data in database "shop".
    pub fn with_shop_on(engine: Engine, host: &str) -> Database {
        let db = Self::start_on(engine, host);
        db.load_shop("shop");
        db
    }

    pub fn engine(&self) -> Engine {
        match self {
            Database::Maria(_) => Engine::Mariadb,
            Database::Pg(_) => Engine::Postgres,
        }
    }

    /// Port, user and password of the account the steps log in with.
    pub fn login(&self) -> (u16, String, String) {
        match self {
            Database::Maria(d) => (d.port, d.user.clone(), d.password.clone()),
            Database::Pg(p) => (p.port, p.user.clone(), p.password.clone()),
        }
    }

    /// What the dump step needs to dump `database`.
    pub fn source(&self, database: &str) -> Source {
        let (port, user, password) = self.login();
        Source {
            engine: self.engine(),
            port,
            database: database.into(),
            user,
            password,
        }
    }

    /// The engine's image, built from Debian packages for the real node.
    pub fn image(&self) -> &'static str {
        match self {
            Database::Maria(_) => super::node::MARIADB_IMAGE,
            Database::Pg(_) => super::node::POSTGRES_IMAGE,
        }
    }

    /// Runs SQL in `database` as the login account; its trimmed output.
    pub fn query(&self, database: &str, sql: &str) -> String {
        match self {
            Database::Maria(d) => d.query(database, sql),
            Database::Pg(p) => p.query(database, sql),
        }
    }

    pub fn create_database(&self, name: &str) {
        match self {
            Database::Maria(d) => d.create_database(name),
            Database::Pg(p) => p.create_database(name),
        }
    }

    /// Creates `database` with the shop schema and data.
    pub fn load_shop(&self, database: &str) {
        self.create_database(database);
        self.query(database, &shop_sql(self.engine()));
    }

    /// Row count and a content checksum per shop table, for comparing a
    /// restore with its source.
    pub fn fingerprint(&self, database: &str) -> Vec<(String, String)> {
        SHOP_TABLES
            .iter()
            .map(|t| {
                let v = match self {
                    Database::Maria(d) => {
                        let count = d.query(database, &format!("SELECT COUNT(*) FROM {t}"));
                        let sum = d.query(database, &format!("CHECKSUM TABLE {t} EXTENDED"));
                        let sum = sum.split_whitespace().last().unwrap_or_default();
                        format!("{count}/{sum}")
                    }
                    Database::Pg(p) => p.query(
                        database,
                        &format!("SELECT count(*) || '/' || md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), '')) FROM {t} x"),
                    ),
                };
                (t.to_string(), v)
            })
            .collect()
    }

    /// Restores a plain SQL dump into `database` (created first).
    pub fn restore(&self, database: &str, sql: &[u8]) {
        self.create_database(database);
        // The clients read the dump from a file: it may be larger than a pipe's buffer.
        let path = std::env::temp_dir().join(format!(
            "dbbackup-restore-{}-{database}.sql",
            random_token(8)
        ));
        std::fs::write(&path, sql).unwrap();
        match self {
            Database::Maria(d) => {
                run_ok(
                    d.client(database)
                        .stdin(std::fs::File::open(&path).unwrap()),
                );
            }
            Database::Pg(p) => {
                run_ok(p.psql(database).arg("-f").arg(&path));
            }
        }
        let _ = std::fs::remove_file(&path);
    }

    /// Restores `sql` into `database` and asserts it matches "shop".
    pub fn restore_and_compare(&self, database: &str, sql: &[u8]) {
        self.restore(database, sql);
        assert_eq!(self.fingerprint(database), self.fingerprint("shop"));
    }

    pub fn pid(&self) -> u32 {
        match self {
            Database::Maria(d) => d.pid(),
            Database::Pg(p) => p.pid(),
        }
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        match self {
            Database::Maria(d) => d.kill(),
            Database::Pg(p) => p.kill(),
        }
    }
}

/// A shop schema: six tables with foreign keys, a few thousand rows, and text
/// that tests quoting (quotes, backslashes, newlines, unicode, NULLs).
pub fn shop_sql(engine: Engine) -> String {
    let rows = match engine {
        Engine::Postgres => POSTGRES_ROWS,
        Engine::Mariadb | Engine::Mysql => MARIADB_ROWS,
    };
    format!("{SHOP_SCHEMA}{rows}")
}

/// Types both engines know by these names (PostgreSQL reads INT as integer,
/// DECIMAL as numeric), so one schema serves both.
const SHOP_SCHEMA: &str = r#"
CREATE TABLE customers (id INT PRIMARY KEY, name TEXT NOT NULL, email TEXT);
CREATE TABLE addresses (id INT PRIMARY KEY, customer_id INT NOT NULL REFERENCES customers(id), street TEXT);
CREATE TABLE products (id INT PRIMARY KEY, title TEXT NOT NULL, price DECIMAL(10,2) NOT NULL);
CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT NOT NULL REFERENCES customers(id), note TEXT);
CREATE TABLE order_items (id INT PRIMARY KEY, order_id INT NOT NULL REFERENCES orders(id), product_id INT NOT NULL REFERENCES products(id), qty INT NOT NULL);
CREATE TABLE payments (id INT PRIMARY KEY, order_id INT NOT NULL REFERENCES orders(id), amount DECIMAL(10,2));
"#;

const MARIADB_ROWS: &str = r#"
INSERT INTO customers SELECT seq, CONCAT('Customer ''', seq, ''' \\ é ✓'), IF(seq % 7 = 0, NULL, CONCAT('c', seq, '@example.com')) FROM seq_1_to_1000;
INSERT INTO addresses SELECT seq, seq, CONCAT('line one', CHAR(10), 'line two ', seq) FROM seq_1_to_1000;
INSERT INTO products SELECT seq, CONCAT('Product ', seq), seq * 1.25 FROM seq_1_to_200;
INSERT INTO orders SELECT seq, (seq % 1000) + 1, IF(seq % 3 = 0, NULL, CONCAT('note "', seq, '"')) FROM seq_1_to_2000;
INSERT INTO order_items SELECT seq, (seq % 2000) + 1, (seq % 200) + 1, (seq % 5) + 1 FROM seq_1_to_5000;
INSERT INTO payments SELECT seq, seq, seq * 2.5 FROM seq_1_to_2000;
"#;

const POSTGRES_ROWS: &str = r#"
INSERT INTO customers SELECT s, 'Customer ''' || s || ''' \ é ✓', CASE WHEN s % 7 = 0 THEN NULL ELSE 'c' || s || '@example.com' END FROM generate_series(1, 1000) s;
INSERT INTO addresses SELECT s, s, 'line one' || chr(10) || 'line two ' || s FROM generate_series(1, 1000) s;
INSERT INTO products SELECT s, 'Product ' || s, s * 1.25 FROM generate_series(1, 200) s;
INSERT INTO orders SELECT s, (s % 1000) + 1, CASE WHEN s % 3 = 0 THEN NULL ELSE 'note "' || s || '"' END FROM generate_series(1, 2000) s;
INSERT INTO order_items SELECT s, (s % 2000) + 1, (s % 200) + 1, (s % 5) + 1 FROM generate_series(1, 5000) s;
INSERT INTO payments SELECT s, s, s * 2.5 FROM generate_series(1, 2000) s;
"#;

pub const SHOP_TABLES: [&str; 6] = [
    "customers",
    "addresses",
    "products",
    "orders",
    "order_items",
    "payments",
];
