//! Unit tests of the registry: no socket, no runtime.

use super::*;

const LIMITS: Limits = Limits {
    credits: 4,
    window_bytes: 1024,
    max_sessions_per_node: 3,
    nodes_per_uid: 3,
    sessions_per_uid: 100,
    sessions_per_opener: 100,
};

fn schema() -> Schema {
    Schema::bytes()
}

fn registry() -> Registry {
    let mut r = Registry::new(LIMITS);
    r.add_node(1, "server".into(), Some(10), 1000).unwrap();
    r.add_node(2, "client".into(), Some(11), 1001).unwrap();
    r
}

#[test]
fn serve_open_and_route_both_ways() {
    let mut r = registry();
    let id = r.serve(1, "svc".into(), schema()).unwrap();
    let o = r.open(2, "svc", &schema()).unwrap();
    assert_eq!((o.server_node, o.service), (1, id));
    assert_eq!(
        (o.client_name.as_str(), o.server_name.as_str()),
        ("client", "server")
    );
    assert_eq!(
        r.send(2, o.client_end, 10, 0, 0).unwrap(),
        Some(Route {
            end: o.server_end,
            node: 1
        })
    );
    assert_eq!(
        r.send(1, o.server_end, 10, 0, 0).unwrap(),
        Some(Route {
            end: o.client_end,
            node: 2
        })
    );
    assert_eq!(r.end_count(), 2);
}

#[test]
fn names_are_unique_and_unserve_is_by_id_and_owner() {
    let mut r = registry();
    let id = r.serve(1, "svc".into(), schema()).unwrap();
    assert_eq!(
        r.serve(2, "svc".into(), schema()).unwrap_err().code,
        ErrorCode::AlreadyServed
    );
    assert_eq!(r.unserve(2, id).unwrap_err().code, ErrorCode::NotServed);
    assert_eq!(r.unserve(1, id).unwrap(), "svc");
    assert_eq!(r.unserve(1, id).unwrap_err().code, ErrorCode::NotServed);
    assert_eq!(
        r.open(2, "svc", &schema()).unwrap_err(),
        OpenRefusal::Refused(Refusal::new(ErrorCode::NotServed, "no node serves \"svc\""))
    );
    assert_eq!(r.service_count(), 0);
    // The name is free again.
    r.serve(2, "svc".into(), schema()).unwrap();
}

#[test]
fn schema_mismatch_names_both_sides() {
    let mut r = registry();
    let typed = |name: &str| ipc_core::control::MessageType {
        name: name.into(),
        fingerprint: 7,
    };
    let server = Schema {
        send: typed("A"),
        recv: typed("B"),
    };
    r.serve(1, "svc".into(), server).unwrap();
    let OpenRefusal::SchemaMismatch { server: told } = r.open(2, "svc", &schema()).unwrap_err()
    else {
        panic!("expected a schema mismatch");
    };
    assert_eq!(
        (told.send.name.as_str(), told.recv.name.as_str()),
        ("A", "B")
    );
}

#[test]
fn the_window_counts_messages_and_bytes() {
    let mut r = registry();
    r.serve(1, "svc".into(), schema()).unwrap();
    let o = r.open(2, "svc", &schema()).unwrap();
    let c = o.client_end;
    // One message larger than the window may go alone ...
    r.send(2, c, 4096, 0, 0).unwrap();
    // ... but nothing after it.
    let v = r.send(2, c, 1, 0, 0).unwrap_err();
    assert_eq!(v.kind, ViolationKind::Window);
    assert_eq!(r.refund(c, 1, 4096), Some(2));
    // Bytes: 1024 in 256-byte charges.
    for _ in 0..4 {
        r.send(2, c, 256, 0, 0).unwrap();
    }
    assert_eq!(
        r.send(2, c, 256, 0, 0).unwrap_err().kind,
        ViolationKind::Window
    );
    r.refund(c, 1, 256);
    // Messages: 4 at most even when they are empty.
    r.send(2, c, 0, 0, 0).unwrap();
    assert_eq!(
        r.send(2, c, 0, 0, 0).unwrap_err().kind,
        ViolationKind::Window
    );
    r.refund(c, 4, 768);
    assert_eq!(r.end(c).unwrap().in_flight_bytes, 0);
    assert_eq!(r.end(c).unwrap().in_flight, 0);
}

#[test]
fn foreign_ends_and_data_after_fin_are_violations() {
    let mut r = registry();
    r.serve(1, "svc".into(), schema()).unwrap();
    let o = r.open(2, "svc", &schema()).unwrap();
    assert_eq!(
        r.send(1, o.client_end, 1, 0, 0).unwrap_err().kind,
        ViolationKind::ForeignSession
    );
    assert_eq!(
        r.send(2, 999, 1, 0, 0).unwrap_err().kind,
        ViolationKind::ForeignSession
    );
    assert_eq!(
        r.fin(2, o.client_end).unwrap(),
        Some(Route {
            end: o.server_end,
            node: 1
        })
    );
    assert_eq!(
        r.send(2, o.client_end, 1, 0, 0).unwrap_err().kind,
        ViolationKind::DataAfterFin
    );
}

#[test]
fn closing_an_end_unlinks_its_peer() {
    let mut r = registry();
    r.serve(1, "svc".into(), schema()).unwrap();
    let o = r.open(2, "svc", &schema()).unwrap();
    assert_eq!(
        r.close_end(o.client_end),
        Some(Route {
            end: o.server_end,
            node: 1
        })
    );
    assert_eq!(r.close_end(o.client_end), None);
    // The server's sends now go nowhere (its node was told).
    assert_eq!(r.send(1, o.server_end, 1, 0, 0).unwrap(), None);
    assert_eq!(r.close_end(o.server_end), None);
    assert_eq!(r.end_count(), 0);
    assert!(r.node(1).unwrap().ends.is_empty());
}

#[test]
fn removing_a_node_frees_its_names_and_leaves_its_ends_to_close() {
    let mut r = registry();
    r.serve(1, "a".into(), schema()).unwrap();
    r.serve(1, "b".into(), schema()).unwrap();
    let o = r.open(2, "a", &schema()).unwrap();
    let entry = r.remove_node(1).unwrap();
    assert_eq!(entry.services.len(), 2);
    assert_eq!(r.service_count(), 0);
    assert_eq!(entry.ends.len(), 1);
    for end in &entry.ends {
        assert_eq!(
            r.close_end(*end),
            Some(Route {
                end: o.client_end,
                node: 2
            })
        );
    }
    r.serve(2, "a".into(), schema()).unwrap();
}

#[test]
fn admission_limits_per_uid_and_per_opener() {
    let mut r = Registry::new(Limits {
        max_sessions_per_node: 1000,
        nodes_per_uid: 2,
        sessions_per_uid: 8,
        sessions_per_opener: 3,
        ..LIMITS
    });
    r.add_node(1, "server".into(), None, 7).unwrap();
    r.add_node(2, "hoarder".into(), None, 8).unwrap();
    r.add_node(3, "other".into(), None, 8).unwrap();
    assert_eq!(
        r.add_node(4, "one too many".into(), None, 8),
        Err((Limit::NodesPerUid, 2))
    );
    r.serve(1, "svc".into(), schema()).unwrap();
    // One opener takes at most 3 of the server's slots; another still gets in.
    let mine: Vec<_> = (0..3)
        .map(|_| r.open(2, "svc", &schema()).unwrap())
        .collect();
    assert_eq!(
        r.open(2, "svc", &schema()).unwrap_err(),
        OpenRefusal::Limit {
            limit: Limit::SessionsPerOpener,
            max: 3
        }
    );
    r.open(3, "svc", &schema()).unwrap();
    // uid 8 holds 4 ends, uid 7 (the server) 4 as well; closing one frees a slot.
    r.close_end(mine[0].client_end);
    r.open(2, "svc", &schema()).unwrap();
    // Sessions per uid: the server's uid holds 5 ends now; 3 more fit, then no more.
    r.add_node(5, "third".into(), None, 9).unwrap();
    r.open(3, "svc", &schema()).unwrap();
    r.open(3, "svc", &schema()).unwrap();
    r.open(5, "svc", &schema()).unwrap();
    assert_eq!(
        r.open(5, "svc", &schema()).unwrap_err(),
        OpenRefusal::Limit {
            limit: Limit::SessionsPerUid,
            max: 8
        }
    );
    // A node that goes frees its uid's node slot and its ends.
    let gone = r.remove_node(2).unwrap();
    for end in &gone.ends {
        r.close_end(*end);
    }
    r.add_node(4, "now it fits".into(), None, 8).unwrap();
}

#[test]
fn the_session_limit_counts_both_nodes() {
    let mut r = registry();
    r.serve(1, "svc".into(), schema()).unwrap();
    for _ in 0..3 {
        r.open(2, "svc", &schema()).unwrap();
    }
    assert!(matches!(
        r.open(2, "svc", &schema()).unwrap_err(),
        OpenRefusal::Refused(Refusal {
            code: ErrorCode::Resources,
            ..
        })
    ));
}
