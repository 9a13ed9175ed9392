//! Users, roles and permissions from the `--auth-users` TOML file, and the
//! permission check. Pure: parsing and matching only.
//!
//! A resource is `namespace:group:naming/service` (the default namespace
//! written `public`); a permission's resource may use `*` for any run of
//! characters, as Nacos matches them. `ROLE_ADMIN` may do everything.

use std::collections::HashMap;

use serde::Deserialize;

/// The role that may do everything (Nacos's global admin).
pub const ADMIN_ROLE: &str = "ROLE_ADMIN";
/// Users and roles in one file, at most.
pub const USERS_MAX: usize = 10_000;

/// What a request does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reads and subscriptions.
    Read,
    /// Writes and beats.
    Write,
}

impl Action {
    pub fn letter(self) -> &'static str {
        match self {
            Action::Read => "r",
            Action::Write => "w",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// The resource pattern (`*` matches any run of characters).
    pub resource: String,
    pub read: bool,
    pub write: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// bcrypt hash of the password.
    pub password_hash: String,
    /// Holds `ROLE_ADMIN`.
    pub admin: bool,
    /// Every permission of every role the user holds.
    pub permissions: Vec<Permission>,
}

impl User {
    /// Whether the user may do `action` on `resource`.
    pub fn allows(&self, resource: &str, action: Action) -> bool {
        self.admin
            || self.permissions.iter().any(|p| {
                let granted = match action {
                    Action::Read => p.read,
                    Action::Write => p.write,
                };
                granted && glob_match(p.resource.as_bytes(), resource.as_bytes())
            })
    }
}

/// The users of one version of the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    pub users: HashMap<String, User>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRows {
    #[serde(default)]
    users: Vec<UserRow>,
    #[serde(default)]
    roles: Vec<RoleRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRow {
    username: String,
    password_hash: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleRow {
    name: String,
    #[serde(default)]
    permissions: Vec<PermissionRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionRow {
    resource: String,
    action: String,
}

impl UserDb {
    /// Parses the users file; every mistake is refused with its reason.
    pub fn parse(text: &str) -> Result<UserDb, String> {
        let rows: FileRows = toml::from_str(text).map_err(|e| e.to_string())?;
        if rows.users.len() > USERS_MAX || rows.roles.len() > USERS_MAX {
            return Err(format!("more than {USERS_MAX} users or roles"));
        }
        let mut roles: HashMap<&str, Vec<Permission>> = HashMap::new();
        for r in &rows.roles {
            if r.name.trim().is_empty() {
                return Err("a role without a name".into());
            }
            if r.name == ADMIN_ROLE {
                return Err(format!("{ADMIN_ROLE} is built in; do not define it"));
            }
            let mut perms = Vec::with_capacity(r.permissions.len());
            for p in &r.permissions {
                let (read, write) = match p.action.trim() {
                    "r" => (true, false),
                    "w" => (false, true),
                    "rw" | "wr" => (true, true),
                    other => {
                        return Err(format!(
                            "role {:?}: action {other:?} is not r, w or rw",
                            r.name
                        ))
                    }
                };
                if p.resource.trim().is_empty() {
                    return Err(format!(
                        "role {:?}: a permission without a resource",
                        r.name
                    ));
                }
                perms.push(Permission {
                    resource: p.resource.trim().to_string(),
                    read,
                    write,
                });
            }
            if roles.insert(&r.name, perms).is_some() {
                return Err(format!("role {:?} is defined twice", r.name));
            }
        }
        let mut users = HashMap::with_capacity(rows.users.len());
        for u in rows.users {
            if u.username.trim().is_empty() || u.username != u.username.trim() {
                return Err(format!("user name {:?} is empty or padded", u.username));
            }
            if !looks_like_bcrypt(&u.password_hash) {
                return Err(format!(
                    "user {:?}: password_hash is not a bcrypt hash ($2b$..., 60 characters); \
                     make one with `distro-registry hash-password`",
                    u.username
                ));
            }
            let mut user = User {
                password_hash: u.password_hash,
                admin: false,
                permissions: Vec::new(),
            };
            for role in &u.roles {
                if role == ADMIN_ROLE {
                    user.admin = true;
                    continue;
                }
                let perms = roles.get(role.as_str()).ok_or_else(|| {
                    format!(
                        "user {:?} has role {role:?}, which is not defined",
                        u.username
                    )
                })?;
                user.permissions.extend(perms.iter().cloned());
            }
            if users.insert(u.username.clone(), user).is_some() {
                return Err(format!("user {:?} is defined twice", u.username));
            }
        }
        Ok(UserDb { users })
    }
}

fn looks_like_bcrypt(h: &str) -> bool {
    h.len() == 60
        && ["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|p| h.starts_with(p))
}

/// The resource a request touches: `namespace:group:naming/service`.
pub fn resource(namespace: &str, group: &str, service: &str) -> String {
    let ns = if namespace.is_empty() {
        "public"
    } else {
        namespace
    };
    format!("{ns}:{group}:naming/{service}")
}

/// `*` in `pattern` matches any run of bytes (also none); everything else
/// matches itself. Linear in practice: one backtrack point at a time.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

    fn db() -> UserDb {
        UserDb::parse(&format!(
            r#"
            [[users]]
            username = "nacos"
            password_hash = "{HASH}"
            roles = ["ROLE_ADMIN"]

            [[users]]
            username = "orders"
            password_hash = "{HASH}"
            roles = ["orders-rw"]

            [[roles]]
            name = "orders-rw"
            permissions = [{{ resource = "public:DEFAULT_GROUP:naming/orders", action = "rw" }},
                           {{ resource = "public:*:naming/*", action = "r" }}]
            "#
        ))
        .unwrap()
    }

    #[test]
    fn roles_grant_what_they_name() {
        let db = db();
        let admin = &db.users["nacos"];
        assert!(admin.allows("dev:G:naming/x", Action::Write));
        let o = &db.users["orders"];
        let orders = resource("", "DEFAULT_GROUP", "orders");
        assert_eq!(orders, "public:DEFAULT_GROUP:naming/orders");
        assert!(o.allows(&orders, Action::Write));
        assert!(o.allows(&resource("public", "G", "pay"), Action::Read));
        assert!(!o.allows(&resource("public", "G", "pay"), Action::Write));
        assert!(!o.allows(&resource("dev", "DEFAULT_GROUP", "orders"), Action::Read));
        // The service list of a group is `naming/*`: granted by the pattern.
        assert!(o.allows(&resource("public", "DEFAULT_GROUP", "*"), Action::Read));
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "abc", true),
            ("a*c", "abc", true),
            ("a*c", "ab", false),
            ("public:*:naming/*", "public:G:naming/s", true),
            ("public:*:naming/*", "dev:G:naming/s", false),
            ("*b*b*", "abxbxb", true),
            ("abc", "abcd", false),
            ("a**", "a", true),
        ] {
            assert_eq!(glob_match(p.as_bytes(), t.as_bytes()), want, "{p} {t}");
        }
    }

    #[test]
    fn mistakes_are_refused_with_a_reason() {
        let cases = [
            ("[[users]]\nusername = \"a\"\npassword_hash = \"plain\"\n", "bcrypt"),
            (
                &format!("[[users]]\nusername = \"a\"\npassword_hash = \"{HASH}\"\nroles = [\"nope\"]\n"),
                "not defined",
            ),
            (
                "[[roles]]\nname = \"r\"\npermissions = [{ resource = \"x\", action = \"x\" }]\n",
                "not r, w or rw",
            ),
            ("[[users]]\nusername = \"a\"\n", "password_hash"),
            ("nonsense = 1\n", "unknown field"),
            (
                &format!(
                    "[[users]]\nusername = \"a\"\npassword_hash = \"{HASH}\"\n[[users]]\nusername = \"a\"\npassword_hash = \"{HASH}\"\n"
                ),
                "twice",
            ),
        ];
        for (text, why) in cases {
            let e = UserDb::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        assert_eq!(UserDb::parse("").unwrap(), UserDb::default());
    }
}
