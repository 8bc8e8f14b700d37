// Cloudflare Workers (and other runtimes that import `.wasm` files as compiled modules:
// wrangler, esbuild with `--loader:.wasm=copy`): the module is instantiated at import.
import module from "../dist/wasm/larder_bg.wasm";
import { initSync } from "../dist/wasm/larder.js";

initSync({ module });

export * from "./larder.js";
