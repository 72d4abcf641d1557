export const vendor = "webpack-style fingerprint";
