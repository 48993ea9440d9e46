//! The per-slot policy tables are sized by the policy: a small policy gets
//! small tables, a policy past the old fixed capacities (1,048,576 rule
//! entries) loads, traffic follows the old policy and then the new one
//! across the switch, and a restarted agent adopts the sized tables in
//! place.

use std::{
    fmt::Write,
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{Array, ArrayOfMaps, Map, MapData};
use segment_common::map_names;
use segment_tests::{
    agent::Agent,
    lab::Lab,
    traffic::{LONG, SHORT, Tcp, sa, tcp_echo_server, tcp_exchange},
};

/// web may reach db on 5432, nothing else.
const SMALL: &str = "mode: enforce
acls:
  - action: accept
    src: [10.10.0.2]
    dst: [\"10.10.1.10:5432\"]
    proto: [tcp]
";

/// Hosts on each side of the large policy's cross product.
const SIDE: usize = 740;

/// web may reach db on 5432 and 22; plus rules over two sets of `SIDE`
/// hosts that compile to 2 × SIDE² rule entries (each host of one side is
/// its own class, and every rule from one host reaches every host of the
/// other side): 1,095,200, past the old capacity of 1,048,576.
fn large() -> String {
    let host = |side: u32, i: usize| {
        let i = i as u32;
        format!("10.{}.{}.{}", 200 + side, i / 250, 1 + i % 250)
    };
    let mut y = String::from("mode: enforce\ntags:\n");
    for (side, tag) in [(0, "left"), (1, "right")] {
        let _ = write!(y, "  {tag}: [");
        for i in 0..SIDE {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(y, "{sep}{}", host(side, i));
        }
        y.push_str("]\n");
    }
    y.push_str(
        "acls:\n  - action: accept\n    src: [10.10.0.2]\n    dst: [\"10.10.1.10:5432\", \"10.10.1.10:22\"]\n    proto: [tcp]\n",
    );
    for i in 0..SIDE {
        let _ = write!(
            y,
            "  - action: accept\n    src: [{}]\n    dst: [\"tag:right:443\"]\n    proto: [tcp]\n  - action: accept\n    src: [tag:left]\n    dst: [\"{}:80\"]\n    proto: [tcp]\n",
            host(0, i),
            host(1, i)
        );
    }
    y
}

fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(pin: &Path, name: &str) -> T {
    let data = MapData::from_pin(pin.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    T::try_from(Map::from_map_data(data).unwrap()).unwrap()
}

/// The slot the datapath reads.
fn active_slot(pin: &Path) -> u32 {
    let config: Array<MapData, u32> = open(pin, map_names::CONFIG);
    let v = config.get(&segment_common::CFG_ACTIVE, 0).unwrap();
    assert!(v != 0, "no policy is active");
    (v - 1) & 1
}

/// (map id, capacity) of a slot's rule table.
fn rule_table(pin: &Path, slot: u32) -> (u32, u32) {
    let outer: ArrayOfMaps<MapData, MapData> = open(pin, map_names::RULES);
    let inner = outer.get(&slot, 0).expect("the slot has a rule table");
    let info = inner.info().unwrap();
    (info.id(), info.max_entries())
}

fn generation(agent: &Agent) -> u64 {
    agent.stats()["generation"].as_u64().expect("a generation")
}

/// Waits until the agent reports a generation past `after`.
fn wait_generation(agent: &Agent, after: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let g = generation(agent);
        if g > after {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "no new generation after {after} within {timeout:?}:\n{}",
            agent.log()
        );
        std::thread::sleep(segment_tests::wait::POLL);
    }
}

#[test]
fn tables_grow_past_the_old_capacity_and_a_restart_adopts_them() {
    let lab = Lab::standard();
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let _s2 = tcp_echo_server(&db.ns, sa(db.ip4(), 22));
    let ifaces = lab.gw_ifaces();
    let agent = Agent::start(&lab.gw, SMALL, &ifaces, &[]);
    let pin = agent.dirs.pin.clone();

    // The small policy's tables are small.
    let small_slot = active_slot(&pin);
    let (_, small_capacity) = rule_table(&pin, small_slot);
    assert_eq!(small_capacity, segment_common::MIN_TABLE_ENTRIES);
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), LONG),
        Tcp::Echoed
    );
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 22), SHORT),
        Tcp::TimedOut
    );

    // The large policy: written into the other slot, then switched to.
    let before = generation(&agent);
    std::fs::write(&agent.policy, large()).unwrap();
    wait_generation(&agent, before, Duration::from_secs(240));
    let stats = agent.stats();
    let entries = stats["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "rule_entries"))
        .and_then(|m| m["entries"].as_u64())
        .unwrap_or_else(|| panic!("no rule_entries in {stats}"));
    assert!(entries > 1 << 20, "{entries} rule entries");
    let large_slot = active_slot(&pin);
    assert_ne!(large_slot, small_slot);
    let (large_id, large_capacity) = rule_table(&pin, large_slot);
    assert!(
        u64::from(large_capacity) >= entries,
        "{large_capacity} for {entries}"
    );
    // The new policy is in force, whole: 22 opens, 5432 still does, and
    // a host the policy never names is still refused.
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 22), LONG),
        Tcp::Echoed
    );
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), LONG),
        Tcp::Echoed
    );
    assert_eq!(
        tcp_exchange(&laptop.ns, None, sa(db.ip4(), 22), SHORT),
        Tcp::TimedOut
    );

    // A restarted agent adopts the pinned tables: the slot in force keeps
    // its very table while the new agent writes the other slot.
    let (dirs, policy) = agent.kill9();
    assert_eq!(rule_table(&pin, large_slot), (large_id, large_capacity));
    let agent = Agent::start_with(&lab.gw, dirs, &policy, &ifaces, &[]);
    assert!(
        agent.log().contains("XDP ingress adopted"),
        "{}",
        agent.log()
    );
    let slot = active_slot(&pin);
    let (_, capacity) = rule_table(&pin, slot);
    assert!(u64::from(capacity) >= entries, "{capacity} for {entries}");
    if slot != large_slot {
        // It re-applied the policy into the other slot: the previous table
        // is still the one that was adopted, untouched.
        assert_eq!(rule_table(&pin, large_slot), (large_id, large_capacity));
    }
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 22), LONG),
        Tcp::Echoed
    );
    assert_eq!(
        tcp_exchange(&laptop.ns, None, sa(db.ip4(), 22), SHORT),
        Tcp::TimedOut
    );

    // Back to the small policy: the tables shrink with it.
    let before = generation(&agent);
    std::fs::write(&agent.policy, SMALL).unwrap();
    wait_generation(&agent, before, Duration::from_secs(60));
    let (_, capacity) = rule_table(&pin, active_slot(&pin));
    assert_eq!(capacity, segment_common::MIN_TABLE_ENTRIES);
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 22), SHORT),
        Tcp::TimedOut
    );
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), LONG),
        Tcp::Echoed
    );
}
