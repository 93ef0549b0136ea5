// @musclelora/trainer: everything of a MuScleLoRA experiment except the FLOPs (those are the engine's).
export * from './engine/session.js';
export { openNativeSession, NativeEngineError } from './engine/native.js';
export * from './config/index.js';
export * from './data/index.js';
export * from './eval/index.js';
export * from './train/index.js';
export * from './report/index.js';
export * from './attacks/index.js';
export * from './hub/index.js';
