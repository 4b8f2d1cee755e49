//! The spool across restarts, torn writes and its bound.

use super::*;

fn records(range: std::ops::Range<u32>) -> Vec<(String, String)> {
    range
        .map(|i| (format!("id{i}"), format!("{{\"n\":{i}}}")))
        .collect()
}

/// Delivers everything, returning the ids in order.
fn drain(spool: &mut Spool) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some(entry) = spool.peek().unwrap() {
        ids.push(entry.id.clone());
        spool.ack(&entry).unwrap();
    }
    ids
}

#[test]
fn records_survive_a_restart_and_replay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_bytes: 1 << 20,
        segment_bytes: 40,
    };
    let mut spool = Spool::open(dir.path(), limits).unwrap();
    assert_eq!(spool.append(&records(0..5)).unwrap(), 0);
    assert_eq!(spool.depth(), 5);
    let first = spool.peek().unwrap().unwrap();
    assert_eq!((first.seq, first.id.as_str()), (1, "id0"));
    assert_eq!(first.body, "{\"n\":0}");
    spool.ack(&first).unwrap();
    let second = spool.peek().unwrap().unwrap();
    assert_eq!(second.id, "id1");
    // Not acknowledged: the "agent" stops here.
    drop(spool);

    let mut spool = Spool::open(dir.path(), limits).unwrap();
    assert_eq!(spool.depth(), 4);
    spool.append(&records(5..7)).unwrap();
    assert_eq!(
        drain(&mut spool),
        ["id1", "id2", "id3", "id4", "id5", "id6"]
    );
    assert_eq!(spool.depth(), 0);
    let segments = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .count();
    assert_eq!(segments, 0, "delivered segments are removed");

    // Sequence numbers continue after a restart with an empty spool.
    drop(spool);
    let mut spool = Spool::open(dir.path(), limits).unwrap();
    spool.append(&records(7..8)).unwrap();
    assert_eq!(spool.peek().unwrap().unwrap().seq, 8);
}

#[test]
fn the_cursor_advances_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), Limits::DEFAULT).unwrap();
    spool.append(&records(0..3)).unwrap();
    let entry = spool.peek().unwrap().unwrap();
    spool.ack(&entry).unwrap();
    assert_eq!(
        fs::read_to_string(dir.path().join("cursor")).unwrap(),
        "1\n"
    );
    let entry = spool.peek().unwrap().unwrap();
    spool.ack(&entry).unwrap();
    assert_eq!(
        fs::read_to_string(dir.path().join("cursor")).unwrap(),
        "2\n"
    );
}

#[test]
fn a_torn_record_is_cut_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), Limits::DEFAULT).unwrap();
    spool.append(&records(0..2)).unwrap();
    drop(spool);
    let segment = segment_path(dir.path(), 1);
    let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
    file.write_all(b"3 id2 {\"n\":").unwrap();
    drop(file);
    let mut spool = Spool::open(dir.path(), Limits::DEFAULT).unwrap();
    spool.append(&records(3..4)).unwrap();
    assert_eq!(drain(&mut spool), ["id0", "id1", "id3"]);
}

#[test]
fn over_the_bound_the_oldest_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // Records are 15 bytes: "N idN {"n":N}\n"; 3 per segment.
    let limits = Limits {
        max_bytes: 100,
        segment_bytes: 40,
    };
    let mut spool = Spool::open(dir.path(), limits).unwrap();
    let mut dropped = 0;
    for i in 0..9 {
        dropped += spool.append(&records(i..i + 1)).unwrap();
    }
    assert!(spool.bytes() <= 100, "{}", spool.bytes());
    assert_eq!(dropped, 3, "one whole segment went");
    assert_eq!(spool.depth(), 6);
    let ids = drain(&mut spool);
    assert_eq!(ids, ["id3", "id4", "id5", "id6", "id7", "id8"]);

    // Delivered records in a dropped segment are not counted again.
    let mut spool2 = {
        drop(spool);
        Spool::open(dir.path(), limits).unwrap()
    };
    spool2.append(&records(9..12)).unwrap();
    let entry = spool2.peek().unwrap().unwrap();
    spool2.ack(&entry).unwrap();
    let mut dropped = 0;
    for i in 12..16 {
        dropped += spool2.append(&records(i..i + 1)).unwrap();
    }
    assert_eq!(dropped, 2, "id9 was delivered; id10 and id11 were not");
    assert_eq!(drain(&mut spool2)[0], "id12");
}

#[test]
fn an_entry_pushed_out_while_in_flight_does_not_move_the_cursor_back() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_bytes: 100,
        segment_bytes: 40,
    };
    let mut spool = Spool::open(dir.path(), limits).unwrap();
    spool.append(&records(0..1)).unwrap();
    let in_flight = spool.peek().unwrap().unwrap();
    let mut dropped = 0;
    for i in 1..9 {
        dropped += spool.append(&records(i..i + 1)).unwrap();
    }
    assert_eq!(dropped, 3);
    assert!(!spool.is_pending(in_flight.seq));
    spool.ack(&in_flight).unwrap();
    assert_eq!(spool.peek().unwrap().unwrap().id, "id3");
    assert_eq!(spool.depth(), 6);
}

#[test]
fn one_process_per_spool() {
    let dir = tempfile::tempdir().unwrap();
    let _spool = Spool::open(dir.path(), Limits::DEFAULT).unwrap();
    let err = Spool::open(dir.path(), Limits::DEFAULT).err().unwrap();
    assert!(err.to_string().contains("in use"), "{err}");
}
