/* A host stand-in for the Arduino core, enough for the generated example sketch: Serial reads
 * stdin and prints to stdout; main() runs setup() once and loop() until stdin is exhausted. */
#ifndef TINYSEEK_TEST_ARDUINO_H
#define TINYSEEK_TEST_ARDUINO_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define F(s) (s)

struct HostSerial {
    int pending = -2; /* -2: nothing peeked yet */
    void begin(unsigned long) {}
    explicit operator bool() const { return true; }
    int available() {
        if (pending == -2) pending = getchar();
        return pending != EOF;
    }
    int read() {
        available();
        int c = pending;
        pending = -2;
        return c;
    }
    void print(const char *s) { fputs(s, stdout); }
    void print(char c) { putchar(c); }
    void print(int v) { printf("%d", v); }
    void println(const char *s) { printf("%s\n", s); }
    void println(int v) { printf("%d\n", v); }
};

static HostSerial Serial;

void setup();
void loop();

int main() {
    setup();
    while (Serial.available()) loop();
    return 0;
}

#endif
