use ipc_macros::Message;
use serde::{Deserialize, Serialize};

#[derive(Message, Serialize, Deserialize)]
struct OnField {
    #[message(name = "a")]
    a: u32,
}

#[derive(Message, Serialize, Deserialize)]
enum OnVariant {
    #[message(version = 1)]
    A,
    B(#[message(name = "b")] u32),
}

fn main() {}
