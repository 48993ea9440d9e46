//! Policies the root tests enforce.

/// The policy most root tests enforce on [`crate::lab::Lab::standard`].
pub const LAB_POLICY: &str = r#"
hosts:
  db: 10.10.1.10
users:
  alice: [10.10.9.5, "fd00:9::5"]
  carol: [10.10.9.7]
groups:
  admins: [carol]
tags:
  web: [10.10.0.0/24, "fd00:10::/64"]
  db-server: [db, "fd00:1::10"]
  staff: [10.10.9.0/24, "fd00:9::/64"]
acls:
  - action: accept
    src: [tag:web]
    dst: [tag:db-server:5432]
    proto: tcp
  - action: accept
    src: [tag:web]
    dst: [tag:db-server:5353]
    proto: udp
  - action: accept
    src: [group:admins]
    dst: [tag:db-server:22]
    proto: tcp
  - action: accept
    src: [tag:staff]
    dst: [tag:web:80]
  - action: accept
    src: [alice]
    dst: ["[fd00:10::2]:8443"]
    proto: tcp
"#;
