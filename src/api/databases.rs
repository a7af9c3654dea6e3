//! Which databases of a server a `DatabaseBackup` dumps: one by name, a
//! list, or every one but the system databases.

use super::common::{CredentialsSecretRef, DatabaseSpec, Engine, cel};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = cel(&[
    (
        "[has(self.name), has(self.names), has(self.all) && self.all].filter(x, x).size() == 1",
        "set exactly one of name, names and all: true",
    ),
    (
        "!has(self.exclude) || (has(self.all) && self.all)",
        "exclude applies only with all: true",
    ),
    (
        "!has(self.rolePasswords) || !self.rolePasswords || (self.engine == 'postgres' && !has(self.name))",
        "rolePasswords applies only to a postgres backup of names or all: true, which also stores the roles",
    ),
])))]
pub struct BackupDatabaseSpec {
    /// Database engine: postgres, mariadb or mysql.
    pub engine: Engine,

    /// Host name or address of the database server, as seen from the dump pod.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,

    /// TCP port. Defaults to 5432 for postgres and 3306 for mariadb and mysql.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Name of the one database to dump; its objects go under the prefix itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<String>,

    /// Several databases, each dumped in turn to a series of its own under
    /// `<prefix><database>/`. One failing does not stop the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 1, max = 255)))]
    pub names: Option<Vec<String>>,

    /// Every database on the server, listed at each run, but the system ones
    /// (postgres: postgres, template0, template1; mariadb/mysql: mysql, sys,
    /// information_schema, performance_schema). A database created on the
    /// server is dumped from the next run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,

    /// With all: databases left out, by name or pattern (`*` any run of
    /// characters, `?` one character).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[schemars(inner(length(min = 1, max = 255)))]
    pub exclude: Option<Vec<String>>,

    /// postgres with names or all: the roles stored beside the dumps
    /// (`<prefix>.roles/`) keep their password hashes. Off by default: a
    /// restore of the roles then never changes a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_passwords: Option<bool>,

    /// Secret (in this namespace) with the user name and password to connect with.
    pub credentials_secret: CredentialsSecretRef,

    /// Image that runs the dump tool. Defaults per engine to the official image
    /// (postgres:17, mariadb:11.8, mysql:8.4); its dump tool must not be older than the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
}

/// Which databases one run dumps.
#[derive(Clone, Debug, PartialEq)]
pub enum Selection<'a> {
    One(&'a str),
    Names(&'a [String]),
    All { exclude: &'a [String] },
}

impl BackupDatabaseSpec {
    pub fn selection(&self) -> Selection<'_> {
        match (&self.name, &self.names) {
            (Some(name), _) => Selection::One(name),
            (None, Some(names)) => Selection::Names(names),
            (None, None) => Selection::All {
                exclude: self.exclude.as_deref().unwrap_or_default(),
            },
        }
    }

    /// The server, as a step that connects to one database sees it: the one
    /// named, or none ("") for a step that picks its databases itself.
    pub fn server(&self) -> DatabaseSpec {
        DatabaseSpec {
            engine: self.engine,
            host: self.host.clone(),
            port: self.port,
            name: self.name.clone().unwrap_or_default(),
            credentials_secret: self.credentials_secret.clone(),
            image: self.image.clone(),
        }
    }

    /// Whether each database has a series of its own under the prefix.
    pub fn is_several(&self) -> bool {
        self.name.is_none()
    }
}
