// Node (≥ 20): the wasm module is read from the package and instantiated synchronously.
import { readFileSync } from "node:fs";
import { initSync } from "../dist/wasm/larder.js";

initSync({ module: readFileSync(new URL("../dist/wasm/larder_bg.wasm", import.meta.url)) });

export * from "./larder.js";
