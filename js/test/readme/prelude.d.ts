// What the README's examples take from their surroundings: the Workers runtime's types
// (@cloudflare/workers-types in a Worker project) and the reader's own model call.
interface ExecutionContext {
  waitUntil(promise: Promise<unknown>): void;
}
declare function callTheModel(request: { model: string; prompt: string }): Promise<string>;
