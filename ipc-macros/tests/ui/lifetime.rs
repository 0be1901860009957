use ipc_macros::Message;
use serde::{Deserialize, Serialize};

#[derive(Message, Serialize, Deserialize)]
struct Borrowed<'a> {
    text: &'a str,
}

fn main() {}
