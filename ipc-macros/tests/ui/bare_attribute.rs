use ipc_macros::Message;
use serde::{Deserialize, Serialize};

#[derive(Message, Serialize, Deserialize)]
#[message]
struct NoArguments {
    a: u32,
}

#[derive(Message, Serialize, Deserialize)]
#[message(name)]
struct NoValue {
    a: u32,
}

fn main() {}
