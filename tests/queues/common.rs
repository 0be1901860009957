//! What the queue tests share: a node of this process, a declared queue.

use shmlink::{Node, QueueOptions};

use crate::support::{TestDir, within};

/// A node of this process on the test's engine.
pub(crate) async fn node(dir: &TestDir, name: &str) -> Node {
    within("connect", Node::connect(dir.socket(), name))
        .await
        .expect("connect")
}

/// Declares `queue` on `node` with `options`, which must succeed.
pub(crate) async fn declare(node: &Node, queue: &str, options: QueueOptions) {
    within("declare", node.declare_queue(queue, options))
        .await
        .expect("declare");
}
