import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

// The console is served by the Envoy gateway at `/` (see infra's Envoy config): one HTML page and hashed
// assets under /assets/. `vite dev` proxies the API to a running stack's gateway (CANDELA_GATEWAY_URL).
// The whole app is one script of ~500 KB, ~150 KB gzipped as the gateway sends it. The budget that matters is
// bench/console's (300 KB gzipped), so Vite's warning, at 500 KB before compression, is moved to 1 MB.
export default defineConfig({
  plugins: [react()],
  build: { outDir: "dist", assetsDir: "assets", sourcemap: false, chunkSizeWarningLimit: 1000 },
  server: {
    proxy: {
      "/candela.": process.env.CANDELA_GATEWAY_URL ?? "http://127.0.0.1:8080",
    },
  },
  // make test runs these beside the Python tiers on 2 cores: a test that takes 2 s alone can take 5 there.
  // The timeout catches a hang, not slowness, so it is well above that.
  test: { environment: "jsdom", include: ["src/**/*.test.{ts,tsx}"], testTimeout: 30_000 },
});
