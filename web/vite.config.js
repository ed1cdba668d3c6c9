// One config, two apps: `vite build --mode demo` and `vite build --mode admin`.
// Output goes into the Python package (src/tidings/web/<app>/), which serves it:
// the demo at / of the WebSocket port (with --dev), the admin UI at /admin/ of the API port.
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const APPS = {
  demo: { base: "/" },
  admin: { base: "/admin/" },
};

export default defineConfig(({ command, mode }) => {
  const app = APPS[mode];
  if (!app) {
    throw new Error(`unknown app ${JSON.stringify(mode)}: use --mode demo or --mode admin`);
  }
  const root = fileURLToPath(new URL(`./${mode}/`, import.meta.url));
  const outDir = fileURLToPath(new URL(`../src/tidings/web/${mode}/`, import.meta.url));
  // `vite` (dev server) proxies the hub so the apps can be developed with hot reload
  // against `make run` (WebSocket 8000, API 9000).
  const proxy =
    mode === "demo"
      ? { "/connection": { target: "ws://127.0.0.1:8000", ws: true },
          "/emulation": "http://127.0.0.1:8000" }
      : { "/admin/login": "http://127.0.0.1:9000", "/admin/logout": "http://127.0.0.1:9000",
          "/admin/session": "http://127.0.0.1:9000", "/admin/api": "http://127.0.0.1:9000" };
  return {
    root,
    base: app.base,
    publicDir: false,
    logLevel: command === "build" ? "warn" : "info",
    build: {
      // The demo has a second page: listen.html, a plain EventSource on uni_sse.
      rollupOptions: mode === "demo"
        ? { input: { main: `${root}index.html`, listen: `${root}listen.html` } }
        : {},
      outDir,
      emptyOutDir: true,
      assetsDir: "assets",
      target: "es2020",
      sourcemap: false,
      reportCompressedSize: false,
    },
    server: { proxy },
  };
});
