//! The config array and the dry-run path (issue 9, items 8 and 9).
//!
//! * The emergency override is its own 4-byte entry: an admin sets it with
//!   bpftool alone, and no reload, apply or flow-log change of the agent
//!   rewrites it (before, the agent rewrote the whole 16-byte entry it
//!   shared with the active slot, read-modify-write).
//! * The attached program never runs dry, whatever the packet carries: the
//!   XDP metadata marker that used to make a run dry is just data now.
//! * Every attached program is loaded with the load-time globals `DRY_RUN`
//!   and `ABLATE` at 0 (read back from the kernel), so the verifier pruned
//!   the dry and ablation paths from them.
//! * A table of the slot in force that has gone missing (deleted from its
//!   map of maps behind the agent's back) drops every judged packet as
//!   `drop_internal`, allowed ones included, until a reload writes a whole
//!   slot again.

use std::{path::Path, process::Command, time::Duration};

use segment_tests::{
    agent::{Agent, command},
    frames::{L4, Packet, SYN, ethernet},
    lab::Lab,
    policies::LAB_POLICY,
    traffic::{SHORT, Tcp, ip, sa, tcp_echo_server, tcp_exchange},
};

fn bpftool(args: &[&str]) -> String {
    let out = Command::new("bpftool")
        .args(args)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The README's emergency procedure: one entry, one bpftool call.
fn set_override(pin_dir: &Path, mode: u8) {
    let map = pin_dir.join("SEG_CFG_V2");
    bpftool(&[
        "map",
        "update",
        "pinned",
        map.to_str().unwrap(),
        "key",
        "1",
        "0",
        "0",
        "0",
        "value",
        &mode.to_string(),
        "0",
        "0",
        "0",
    ]);
}

fn reason_count(agent: &Agent, reason: &str) -> u64 {
    agent.stats()["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter(|r| r["reason"] == reason && r["hook"] == "ingress")
        .map(|r| r["packets"].as_u64().expect("count"))
        .sum()
}

#[test]
fn the_emergency_override_is_one_entry_that_reloads_never_touch() {
    let lab = Lab::standard();
    let (web, db) = (lab.host("web"), lab.host("db"));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let _ssh = tcp_echo_server(&db.ns, sa(db.ip4(), 22));
    let denied = || tcp_exchange(&web.ns, None, sa(db.ip4(), 22), SHORT);
    assert_eq!(denied(), Tcp::TimedOut, "web → db:22 is denied");

    set_override(&agent.dirs.pin, 1);
    assert_eq!(agent.stats()["override"], "pass-all");
    assert_eq!(denied(), Tcp::Echoed, "pass-all lets it through");

    // Reloads switch slots (and observe toggles the flow-log entry): the
    // override the admin set stays as it is through all of them.
    for i in 0..20 {
        std::fs::write(&agent.policy, format!("{LAB_POLICY}\n# reload {i}\n")).unwrap();
        let (code, out, err) = command(None, &agent.dirs, &["reload"]);
        assert_eq!(code, 0, "reload {i}: {out}{err}");
        assert_eq!(agent.stats()["override"], "pass-all", "after reload {i}");
    }
    assert_eq!(denied(), Tcp::Echoed, "still pass-all after the reloads");

    set_override(&agent.dirs.pin, 0);
    assert_eq!(agent.stats()["override"], "none");
    assert_eq!(denied(), Tcp::TimedOut, "enforced again");
    // The policy in force is the last one reloaded, not an older slot.
    let generation = agent.stats()["generation"].as_u64().unwrap();
    assert!(generation >= 21, "generation {generation}");
}

#[test]
fn no_packet_can_make_the_attached_program_run_dry() {
    let lab = Lab::standard();
    let web = lab.host("web");
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);

    // A SYN the policy denies (web → db:22), behind the 4-byte metadata
    // marker `explain --live` once used to ask for a dry run.
    const OLD_DRY_RUN_MAGIC: u32 = 0x5345_4744;
    let syn = Packet::new(
        ip("10.10.0.2"),
        ip("10.10.1.10"),
        L4::Tcp {
            sport: 40_001,
            dport: 22,
            flags: SYN,
        },
    );
    let frame = ethernet(web.gw_mac, web.mac, &[], &syn.ip());
    let mut data = OLD_DRY_RUN_MAGIC.to_ne_bytes().to_vec();
    data.extend_from_slice(&frame);
    // struct xdp_md: data (= metadata length), data_end, data_meta,
    // ingress_ifindex, rx_queue_index, egress_ifindex.
    let md: [u32; 6] = [4, data.len() as u32, 0, 0, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let data_file = agent.dirs.state.join("frame.bin");
    let ctx_file = agent.dirs.state.join("ctx.bin");
    std::fs::write(&data_file, &data).unwrap();
    std::fs::write(&ctx_file, &ctx).unwrap();

    let before = reason_count(&agent, "drop_no_rule");
    let prog = agent.dirs.pin.join("prog_segment_ingress");
    let out = bpftool(&[
        "prog",
        "run",
        "pinned",
        prog.to_str().unwrap(),
        "data_in",
        data_file.to_str().unwrap(),
        "ctx_in",
        ctx_file.to_str().unwrap(),
    ]);
    // XDP_DROP is 1.
    assert!(out.contains("Return value: 1"), "bpftool said: {out}");
    // Counted like any real packet: the marker did not make it dry.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if reason_count(&agent, "drop_no_rule") == before + 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the marked packet was not counted as a real drop"
        );
        std::thread::yield_now();
    }

    // explain --live still asks the datapath, through its own dry instance,
    // and that leaves no trace in the counters.
    let (code, out, err) = command(
        None,
        &agent.dirs,
        &[
            "explain",
            agent.policy.to_str().unwrap(),
            "--src",
            "10.10.0.2",
            "--dst",
            "10.10.1.10",
            "--dport",
            "22",
            "--live",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "drop");
    assert_eq!(v["live"]["verdict"], "drop", "{v}");
    assert_eq!(v["live"]["reason"], "drop_no_rule", "{v}");
    assert_eq!(v["live"]["agrees"], true, "{v}");
    assert_eq!(reason_count(&agent, "drop_no_rule"), before + 1);
}

/// The value of the `u32` global `name` in the `.rodata` of the loaded
/// program `prog_id`: its offset from the program's BTF (the `.rodata`
/// DATASEC), its bytes from the program's `.rodata` map.
fn rodata_u32(prog_id: u64, name: &str) -> u32 {
    let show: serde_json::Value = serde_json::from_str(&bpftool(&[
        "-j",
        "prog",
        "show",
        "id",
        &prog_id.to_string(),
    ]))
    .expect("bpftool prog show -j");
    let btf = show["btf_id"].as_u64().expect("the program has BTF");
    let dump = bpftool(&["btf", "dump", "id", &btf.to_string()]);
    let mut in_rodata = false;
    let mut offset = None;
    for line in dump.lines() {
        if line.starts_with('[') {
            in_rodata = line.contains("DATASEC '.rodata'");
        } else if in_rodata && line.contains(&format!("(VAR '{name}')")) {
            offset = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("offset="))
                .and_then(|o| o.parse::<usize>().ok());
        }
    }
    let offset = offset.unwrap_or_else(|| panic!("{name} not in the .rodata of program {prog_id}"));
    let rodata = show["map_ids"]
        .as_array()
        .expect("map ids")
        .iter()
        .map(|id| id.as_u64().unwrap().to_string())
        .find(|id| {
            let m: serde_json::Value =
                serde_json::from_str(&bpftool(&["-j", "map", "show", "id", id])).unwrap();
            m["name"] == ".rodata"
        })
        .expect("the program's .rodata map");
    let entries: serde_json::Value =
        serde_json::from_str(&bpftool(&["-j", "map", "dump", "id", &rodata])).unwrap();
    let bytes: Vec<u8> = entries[0]["value"]
        .as_array()
        .expect("one value")
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    u32::from_ne_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

#[test]
fn attached_programs_are_loaded_whole_and_never_dry() {
    let lab = Lab::standard();
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    // The programs behind the pinned links, i.e. what the interfaces run.
    let links: Vec<_> = std::fs::read_dir(agent.dirs.pin.join("links"))
        .expect("the links directory")
        .map(|e| e.unwrap().path())
        .collect();
    let ifaces = lab.gw_ifaces().len();
    assert_eq!(
        links.len(),
        2 * ifaces,
        "an XDP and a TC link per interface: {links:?}"
    );
    for link in &links {
        let show: serde_json::Value = serde_json::from_str(&bpftool(&[
            "-j",
            "link",
            "show",
            "pinned",
            link.to_str().unwrap(),
        ]))
        .expect("bpftool link show -j");
        let prog = show["prog_id"].as_u64().expect("the link's program");
        assert_eq!(rodata_u32(prog, "ABLATE"), 0, "{link:?}: ablation level");
        assert_eq!(rodata_u32(prog, "DRY_RUN"), 0, "{link:?}: dry run");
    }
}

/// Removes slot `slot`'s inner table from the pinned map of maps `outer`.
fn delete_inner_table(pin_dir: &Path, outer: &str, slot: u64) {
    let map = pin_dir.join(outer);
    let key = slot.to_string();
    bpftool(&[
        "map",
        "delete",
        "pinned",
        map.to_str().unwrap(),
        "key",
        &key,
        "0",
        "0",
        "0",
    ]);
}

#[test]
fn a_missing_table_of_the_slot_in_force_drops_as_internal() {
    let lab = Lab::standard();
    let web = lab.host("web");
    let db = lab.host("db");
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let _pg = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let allowed = || tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), SHORT);
    assert_eq!(allowed(), Tcp::Echoed, "web → db:5432 is allowed");

    // Each of the three tables a judgement reads, in turn: with any one of
    // them gone from the slot in force, an allowed connection is dropped
    // (never judged against a partial policy) and counted as internal.
    for outer in ["SEG_EX4_V2", "SEG_EX6_V2", "SEG_RULE_V2"] {
        let slot = agent.stats()["active_slot"]
            .as_u64()
            .expect("a slot is in force");
        let before = reason_count(&agent, "drop_internal");
        delete_inner_table(&agent.dirs.pin, outer, slot);
        assert_eq!(allowed(), Tcp::TimedOut, "{outer} of slot {slot} deleted");
        let after = reason_count(&agent, "drop_internal");
        assert!(after > before, "{outer}: drop_internal {before} → {after}");
        // The admin's way out still works on a broken slot.
        set_override(&agent.dirs.pin, 1);
        assert_eq!(allowed(), Tcp::Echoed, "{outer}: pass-all overrides");
        set_override(&agent.dirs.pin, 0);

        // A reload writes the other slot whole and switches to it; the
        // next one rewrites the damaged slot with a fresh table.
        for i in 0..2 {
            std::fs::write(&agent.policy, format!("{LAB_POLICY}\n# {outer} {i}\n")).unwrap();
            let (code, out, err) = command(None, &agent.dirs, &["reload"]);
            assert_eq!(code, 0, "reload after deleting {outer}: {out}{err}");
        }
        assert_eq!(allowed(), Tcp::Echoed, "enforcing normally after {outer}");
    }
}
