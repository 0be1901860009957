pub(crate) mod store;
