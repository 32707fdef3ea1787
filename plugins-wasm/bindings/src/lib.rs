//! The guest bindings of world `engine` (plugins-wasm/wit). They live in a
//! crate of their own so that `keybridge-plugin-sdk` can generate world
//! `rotating-engine` on top of them: the export macros of two worlds cannot
//! share a crate.

wit_bindgen::generate!({
    path: "../wit",
    world: "engine",
    pub_export_macro: true,
    export_macro_name: "export_engine_world",
    default_bindings_module: "keybridge_plugin_sdk::bindings::engine",
});
