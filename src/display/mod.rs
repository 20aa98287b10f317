//! Pictures for people, drawn with embedded-graphics onto an RGB image: the demo's contact sheet
//! and map pictures, and the device's status panel ([`draw_panel`]), which [`StatusDisplay`] puts
//! on a Linux framebuffer or into a PNG preview (`[display]` in edge.toml: [`DisplayConfig`]).

mod config;
mod draw;
mod framebuffer;
mod panel;
mod pictures;
mod status_display;

pub use config::{DisplayConfig, DisplayConfigError};
pub use draw::{ImageTarget, draw_text};
pub use framebuffer::{PixelFormat, encode};
pub use panel::{BrokerState, PanelLayout, PanelState, draw_panel, panel_layout};
pub use pictures::{contact_sheet, render_map};
pub use status_display::{DisplayError, StatusDisplay};
