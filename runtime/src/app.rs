//! Assembling a runtime from a [`Config`]: open the store, load every
//! `*.wasm` in the plugins directory with its settings and limits, and
//! hand back an [`Engine`]. The CLI and the end-to-end tests start here.

use crate::config::Config;
use crate::engine::Engine;
use crate::plugin::wasm::WasmHost;
use crate::plugin::SharedCode;
use crate::store::Store;
use anyhow::Context;
use std::sync::Arc;

pub struct App {
    pub config: Config,
    pub engine: Engine,
    pub host: WasmHost,
}

impl App {
    pub fn open(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
        let store = Store::open(&config.data_dir)?;
        let engine = Engine::new(
            store,
            config.format,
            config.engine.workers,
            std::time::Duration::from_millis(config.engine.commit_interval_ms),
        );
        let host = WasmHost::new()?;
        let app = App {
            config,
            engine,
            host,
        };
        app.load_plugins()?;
        Ok(app)
    }

    fn load_plugins(&self) -> anyhow::Result<()> {
        let dir = &self.config.plugins_dir;
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading plugins_dir {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        files.sort();
        for name in self.config.plugins.keys() {
            if !files
                .iter()
                .any(|f| f.file_stem().is_some_and(|s| s == name.as_str()))
            {
                anyhow::bail!(
                    "config: [plugins.{name}] is set but there is no {name}.wasm in {}",
                    dir.display()
                );
            }
        }
        for path in files {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let code = self.host.load(
                &name,
                &bytes,
                self.config.limits_of(&name),
                &self.config.settings_of(&name),
            )?;
            let population = self.config.plugins.get(&name).and_then(|p| p.population);
            tracing::info!(plugin = name, id = code_id(&code), "loaded");
            let code: SharedCode = Arc::new(code);
            self.engine.add(code, population)?;
        }
        Ok(())
    }
}

fn code_id(code: &crate::plugin::wasm::WasmPlugin) -> String {
    use crate::plugin::Code;
    code.id()[..12].to_string()
}
