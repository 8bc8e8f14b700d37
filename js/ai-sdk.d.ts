// Types of `larder/ai-sdk` (lib/ai-sdk.js).
import type { LanguageModelV4Middleware } from "@ai-sdk/provider";
import type { Larder } from "./index.js";

export interface LarderMiddlewareOptions {
  cache: Larder;
  ttlMs?: number;
  namespace?: string;
  tags?: string[];
}

/** A `wrapLanguageModel` middleware caching `generate` and `stream` calls in larder. */
export declare function larderMiddleware(options: LarderMiddlewareOptions): LanguageModelV4Middleware;
