//! Memory budgets: nodes that commit their blocks in a loop reach the engine-wide budget and
//! are refused with `ConnectError::Budget`, while a bystander pair keeps exchanging; the
//! host's shared memory held for nodes never passes the budget.

use std::os::fd::AsFd;

use bytes::Bytes;
use ipc_core::Layout;
use shmlink::{ConnectError, Engine, Limit, MIN_TOPIC_SEGMENT, Node, Publisher, SpawnError};

use crate::common::{Bystander, fresh_node_exchanges};
use crate::support::{self, TestDir, within};

/// Blocks the budget holds: the bystander pair's two, and `BUDGET_BLOCKS - 2` for the loop.
const BUDGET_BLOCKS: u64 = 6;

/// Commits every page of every shmlink memfd this process holds (the engine's own
/// descriptors: the engine runs in this process), as a node that `fallocate`s its block
/// does, and returns the bytes they hold of the host's memory.
fn commit_and_measure() -> u64 {
    let mut held = 0;
    // The engine and the nodes of this process each hold a descriptor of every block.
    let mut seen = std::collections::BTreeSet::new();
    for fd in support::procfs::fds("self") {
        if !fd.target.starts_with("/memfd:shmlink-") || !seen.insert(fd.ino) {
            continue;
        }
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", fd.fd))
        else {
            continue; // closed meanwhile
        };
        let size = file.metadata().expect("stat a memfd").len();
        // The block is sealed against growing, not against allocating within its size.
        rustix::fs::fallocate(file.as_fd(), rustix::fs::FallocateFlags::empty(), 0, size)
            .expect("fallocate a block");
        held += rustix::fs::fstat(&file).expect("fstat").st_blocks as u64 * 512;
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_commit_their_blocks_in_a_loop_stop_at_the_memory_budget() {
    let dir = TestDir::new("flood-memory");
    let block = Layout::compute(&support::small_block())
        .expect("layout")
        .total_size;
    let budget = BUDGET_BLOCKS * block;
    let engine = support::engine_builder(&dir)
        .memory_budget(budget)
        .spawn()
        .expect("engine");
    let mut bystander = Bystander::new(&engine).await;
    bystander.exchange(10).await;

    let mut grown = Vec::new();
    let refused = loop {
        match within(
            "connect",
            Node::connect(dir.socket(), &format!("grow-{}", grown.len())),
        )
        .await
        {
            Ok(node) => {
                grown.push(node);
                let held = commit_and_measure();
                assert!(
                    held <= budget,
                    "the host holds {held} bytes for nodes, over the budget of {budget}"
                );
                bystander.exchange(2).await;
            }
            Err(e) => break e,
        }
        assert!(
            grown.len() as u64 <= BUDGET_BLOCKS,
            "{} nodes admitted past a budget of {BUDGET_BLOCKS} blocks",
            grown.len()
        );
    };
    match refused {
        ConnectError::Budget { limit, max } => {
            assert_eq!(limit, Limit::MemoryBudget);
            assert_eq!(max, budget);
        }
        other => panic!("a node past the budget is refused with Budget, got {other:?}"),
    }
    assert_eq!(
        grown.len() as u64,
        BUDGET_BLOCKS - 2,
        "the budget is used up"
    );
    let stats = within(
        "the budget is reported in use",
        engine.wait_for_stats(|s| s.nodes == BUDGET_BLOCKS as usize),
    )
    .await;
    assert_eq!((stats.memory_used, stats.memory_budget), (budget, budget));
    assert!(commit_and_measure() <= budget);
    bystander.exchange(10).await;

    // One leaves: its block goes back to the budget, and a fresh node fits again.
    drop(grown.pop());
    within(
        "a node's block returns to the budget when it leaves",
        engine.wait_for_stats(|s| s.memory_used == budget - block),
    )
    .await;
    fresh_node_exchanges(&engine, "fresh-after-memory").await;
    drop(grown);
    within(
        "every grown block returns",
        engine.wait_for_stats(|s| s.memory_used == 2 * block && s.nodes == 2),
    )
    .await;
    bystander.exchange(10).await;
    drop(bystander);
    support::all_gone(engine).await;
}

/// A per-node budget smaller than one block could never admit a node: refused at spawn.
#[tokio::test]
async fn a_per_node_budget_below_one_block_is_refused_at_spawn() {
    let dir = TestDir::new("memory-node-budget");
    let block = Layout::compute(&support::small_block())
        .expect("layout")
        .total_size;
    match support::engine_builder(&dir)
        .node_memory_budget(block - 1)
        .spawn()
    {
        Err(SpawnError::Budget {
            block: b,
            node_budget,
            ..
        }) => assert_eq!((b, node_budget), (block, block - 1)),
        other => panic!("expected SpawnError::Budget, got {other:?}"),
    }
    // A per-node budget of exactly one block admits nodes, a second node still fits the
    // engine-wide budget of two blocks and a topic segment, and the topic's segment counts.
    let engine: Engine = support::engine_builder(&dir)
        .memory_budget(2 * block + MIN_TOPIC_SEGMENT)
        .node_memory_budget(block)
        .topic_segment_size(MIN_TOPIC_SEGMENT)
        .spawn()
        .expect("engine");
    let pair = support::pair(&engine, "one-block-each").await;
    let publisher: Publisher<Bytes> = within("publish", pair.client.publish("budgeted"))
        .await
        .expect("publish");
    let stats = within(
        "the topic's segment is counted",
        engine.wait_for_stats(|s| s.topic_segments == 1),
    )
    .await;
    assert_eq!(stats.memory_used, 2 * block + MIN_TOPIC_SEGMENT);
    drop(publisher);
    drop(pair);
    within(
        "every byte returns to the budget",
        engine.wait_for_stats(|s| s.memory_used == 0 && s.nodes == 0),
    )
    .await;
    support::all_gone(engine).await;
}
