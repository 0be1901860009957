//! What a bridge joins and what it lets cross.

use std::path::Path;

use ipc_tokio::message::Bincode;
use ipc_tokio::{ConnectError, MessageType, Overflow, Payload, SubscribeOptions, TopicSetupError};
use thiserror::Error;

/// The default namespace: the first chunk of every Zenoh key a bridge uses.
pub const DEFAULT_NAMESPACE: &str = "shmlink";

/// The default credit window of a tunnelled session: messages one side may send before the
/// other has delivered them to its local node.
pub const DEFAULT_WINDOW: u32 = 256;

/// The default untether timeout of the bridge's subscriptions to exported topics.
pub const DEFAULT_UNTETHER_MS: u64 = 10_000;

/// A bridge's settings: the Zenoh session to join and the names that cross. Nothing crosses
/// unless named here.
///
/// # Examples
///
/// ```
/// use ipc_bridge::BridgeConfig;
///
/// let config = BridgeConfig::new(zenoh::Config::default())
///     .export_service("quotes")
///     .import_service("billing");
/// assert_eq!(config.exported_services(), ["quotes"]);
/// ```
#[derive(Debug)]
pub struct BridgeConfig {
    pub(crate) zenoh: zenoh::Config,
    pub(crate) namespace: String,
    pub(crate) node_name: String,
    pub(crate) window: u32,
    pub(crate) topic_subscription: SubscribeOptions,
    pub(crate) export_services: Vec<String>,
    pub(crate) import_services: Vec<String>,
    pub(crate) export_topics: Vec<(String, MessageType)>,
    pub(crate) import_topics: Vec<(String, MessageType)>,
}

impl BridgeConfig {
    /// A bridge joining Zenoh with `zenoh` (mode, endpoints, TLS, authentication: see the
    /// crate docs), exporting and importing nothing yet.
    pub fn new(zenoh: zenoh::Config) -> Self {
        Self {
            zenoh,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            node_name: "bridge".to_owned(),
            window: DEFAULT_WINDOW,
            topic_subscription: SubscribeOptions {
                overflow: Overflow::Block {
                    untether_ms: DEFAULT_UNTETHER_MS,
                },
                queue: 1024,
                history: 0,
            },
            export_services: Vec::new(),
            import_services: Vec::new(),
            export_topics: Vec::new(),
            import_topics: Vec::new(),
        }
    }

    /// A bridge joining Zenoh with the Zenoh configuration file at `path` (JSON5, Zenoh's
    /// own format).
    ///
    /// # Errors
    ///
    /// [`BridgeError::Zenoh`] if the file cannot be read or is not a valid Zenoh config.
    pub fn from_zenoh_file(path: impl AsRef<Path>) -> Result<Self, BridgeError> {
        let zenoh = zenoh::Config::from_file(path.as_ref()).map_err(BridgeError::zenoh)?;
        Ok(Self::new(zenoh))
    }

    /// The first chunk of every Zenoh key the bridge uses (default [`DEFAULT_NAMESPACE`]):
    /// bridges see each other only within one namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The bridge's node name on its engine (default `"bridge"`).
    pub fn node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = name.into();
        self
    }

    /// The credit window of each tunnelled session (default [`DEFAULT_WINDOW`], at least 1):
    /// what one side sends before the other has delivered it locally. A slow receiver stalls
    /// only its own session once its window is used.
    pub fn window(mut self, messages: u32) -> Self {
        self.window = messages.max(1);
        self
    }

    /// How the bridge subscribes to the topics it exports (default: `Overflow::Block` with a
    /// [`DEFAULT_UNTETHER_MS`] untether timeout, a queue of 1024): blocking holds local
    /// publishers back while the bridge forwards, so nothing is dropped on the way out;
    /// `DropOldest` keeps local publishers free and logs what the bridge missed.
    pub fn topic_subscription(mut self, options: SubscribeOptions) -> Self {
        self.topic_subscription = options;
        self
    }

    /// Lets bridges elsewhere open sessions (and tower clients) to the local service `name`.
    pub fn export_service(mut self, name: impl Into<String>) -> Self {
        self.export_services.push(name.into());
        self
    }

    /// Serves `name` locally on behalf of a bridge elsewhere that exports it, while none
    /// serves it here: local nodes' `open(name)` and `client(name)` reach the remote server.
    pub fn import_service(mut self, name: impl Into<String>) -> Self {
        self.import_services.push(name.into());
        self
    }

    /// Publishes the local topic `name` (carrying `T`) to bridges that import it.
    pub fn export_topic<T: Payload<Bincode>>(self, name: impl Into<String>) -> Self {
        self.export_topic_as(name, T::message_type())
    }

    /// As [`BridgeConfig::export_topic`], with the type named by value.
    pub fn export_topic_as(mut self, name: impl Into<String>, ty: MessageType) -> Self {
        self.export_topics.push((name.into(), ty));
        self
    }

    /// Publishes on the local topic `name` (carrying `T`) what bridges elsewhere export on
    /// it. A message of another type (name or fingerprint) is refused and logged.
    pub fn import_topic<T: Payload<Bincode>>(self, name: impl Into<String>) -> Self {
        self.import_topic_as(name, T::message_type())
    }

    /// As [`BridgeConfig::import_topic`], with the type named by value.
    pub fn import_topic_as(mut self, name: impl Into<String>, ty: MessageType) -> Self {
        self.import_topics.push((name.into(), ty));
        self
    }

    /// The exported service names.
    pub fn exported_services(&self) -> &[String] {
        &self.export_services
    }

    /// The imported service names.
    pub fn imported_services(&self) -> &[String] {
        &self.import_services
    }

    /// Checks the names: a name both imported and exported (a loop), or a namespace that is
    /// not one Zenoh key chunk.
    pub(crate) fn validate(&self) -> Result<(), BridgeError> {
        let ns = &self.namespace;
        if ns.is_empty() || ns.contains(['/', '*', '$', '?', '#']) {
            return Err(BridgeError::Namespace(ns.clone()));
        }
        for name in &self.import_services {
            if self.export_services.contains(name) {
                return Err(BridgeError::Loop(name.clone()));
            }
        }
        for (name, _) in &self.import_topics {
            if self.export_topics.iter().any(|(n, _)| n == name) {
                return Err(BridgeError::Loop(name.clone()));
            }
        }
        Ok(())
    }
}

/// Why a bridge could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// `Bridge::start` was called in a current-thread Tokio runtime; Zenoh needs a
    /// multi-thread one (one worker thread is enough).
    #[error(
        "the bridge needs a multi-thread Tokio runtime (Zenoh does not run on a current-thread one)"
    )]
    CurrentThreadRuntime,
    /// The bridge's node could not connect to its engine.
    #[error("the bridge cannot connect to its engine: {0}")]
    Connect(#[from] ConnectError),
    /// Zenoh refused (config, session, declaration); its error in words.
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// A name is both imported and exported by one bridge: its messages would loop.
    #[error("{0:?} is both imported and exported: it would loop")]
    Loop(String),
    /// The namespace is empty or not a single Zenoh key chunk.
    #[error("invalid namespace {0:?}: one non-empty Zenoh key chunk without / * $ ? #")]
    Namespace(String),
    /// The name is not exported by this bridge.
    #[error("{0:?} is not exported by this bridge")]
    NotExported(String),
    /// A topic could not be set up on the local engine.
    #[error("topic {topic:?}: {source}")]
    Topic {
        /// The topic.
        topic: String,
        /// The engine's refusal.
        #[source]
        source: TopicSetupError,
    },
}

impl BridgeError {
    pub(crate) fn zenoh(e: impl std::fmt::Display) -> Self {
        Self::Zenoh(e.to_string())
    }
}
