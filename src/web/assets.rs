//! The tablet page's files, embedded at build time (`build.rs` lists every HTML, JS, CSS, image
//! and JSON file under `web/`).

/// One embedded file of `web/`.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Path relative to `web/`, `/`-separated, e.g. `vendor/mqtt.min.js`.
    pub path: &'static str,
    /// The file's bytes.
    pub bytes: &'static [u8],
}

impl Asset {
    /// The HTTP `Content-Type` of the file, from its extension.
    pub fn content_type(&self) -> &'static str {
        match self.path.rsplit_once('.').map_or("", |(_, ext)| ext) {
            "html" => "text/html; charset=utf-8",
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "json" => "application/json",
            "png" => "image/png",
            "svg" => "image/svg+xml",
            "ico" => "image/x-icon",
            _ => "application/octet-stream",
        }
    }
}

/// Every embedded file, sorted by path.
pub const ASSETS: &[Asset] = include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The file served at URL path `path` (`/` is `index.html`; a query string is ignored).
pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let rel = match path.trim_start_matches('/') {
        "" => "index.html",
        rel => rel,
    };
    ASSETS.iter().find(|a| a.path == rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_mqtt_js_are_embedded() {
        let index = asset("/").expect("index.html");
        assert_eq!(index.content_type(), "text/html; charset=utf-8");
        assert!(std::str::from_utf8(index.bytes).unwrap().contains("<html"), "index.html");
        assert!(asset("/index.html?x=1").is_some());
        let mqtt = asset("/vendor/mqtt.min.js").expect("the vendored MQTT.js");
        assert!(mqtt.bytes.len() > 100_000 && mqtt.content_type().starts_with("text/javascript"));
        // Every script the page loads is embedded.
        let html = std::str::from_utf8(index.bytes).unwrap();
        for src in html.split("src=\"").skip(1).filter_map(|s| s.split('"').next()) {
            assert!(asset(src).is_some(), "index.html loads {src}, which is not embedded");
        }
        assert!(asset("/../Cargo.toml").is_none() && asset("/vendor/README.md").is_none());
    }
}
